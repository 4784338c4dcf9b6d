//! [`MockUpstream`]: a raw HTTP/1.1 server (plain or TLS) playing an OpenAI-compatible
//! upstream. It answers according to a [`Behavior`] and records every request, the moment
//! each streamed chunk was sent, and every time the gateway hung up mid-response.
//!
//! It runs on its own thread with its own single-threaded Tokio runtime; dropping the
//! `MockUpstream` stops it and closes its connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openssl::ssl::{Ssl, SslAcceptor};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::http1::{self, Conn, Peer, WireRequest};
use super::openai;
use super::tls::{TestCa, acceptor_for};

/// Header added to every mock response (value: the mock's port), so tests can tell a
/// proxied answer from one the gateway made itself.
pub const MOCK_HEADER: &str = "x-mock-upstream";

/// How the mock answers a request. Cloned per request, so it can be swapped at run time
/// with [`MockUpstream::set_behavior`].
#[derive(Clone)]
pub enum Behavior {
    /// `status` with `body` as JSON and a Content-Length.
    Json { status: u16, body: Value },
    /// A `chat.completion` whose `model` echoes the request's, with `usage`
    /// ([`openai::chat_completion_json`]); if the request has `"stream": true`, the same as
    /// SSE ([`openai::echo_stream_events`], usage chunk when `stream_options.include_usage`).
    EchoChat,
    /// `text/event-stream`, chunked: each string (a full `data: ...\n\n` event) is written
    /// and flushed as its own chunk, `delay_between` apart, then `data: [DONE]\n\n` after
    /// one more `delay_between`.
    Sse {
        chunks: Vec<String>,
        delay_between: Duration,
    },
    /// Like `Sse`, but after the last chunk the connection is closed: no `[DONE]`, no
    /// terminating zero-length chunk (an upstream dying mid-stream).
    SseAbort {
        chunks: Vec<String>,
        delay_between: Duration,
    },
    /// Waits `before_headers` (noticing if the peer hangs up meanwhile), then does `then`.
    Delay {
        before_headers: Duration,
        then: Box<Behavior>,
    },
    /// Any status, headers and body; Content-Length is added.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// A JSON answer whose `Content-Length` promises `declared` bytes, of which only
    /// `body` is sent before the connection is closed (a truncated response).
    Truncated { declared: usize, body: Bytes },
    /// Closes the connection without answering.
    Close,
    /// Writes these bytes instead of an HTTP response, then closes (a broken or
    /// non-HTTP peer).
    Garbage(Bytes),
    /// A 200 of `content_type`, chunked, whose body never ends: `piece` every `every`
    /// until the peer hangs up.
    Endless {
        content_type: &'static str,
        piece: Bytes,
        every: Duration,
    },
    /// A 200 of `content_type` declaring `total` bytes with Content-Length, written as
    /// fast as the peer reads: `prefix`, then `fill` bytes until `total`.
    Enormous {
        content_type: &'static str,
        prefix: Bytes,
        fill: u8,
        total: usize,
    },
    /// The n-th request this upstream receives gets the n-th behavior; the last repeats.
    Sequence(Vec<Behavior>),
    /// Decides per request.
    Custom(Arc<dyn Fn(&RecordedRequest) -> Behavior + Send + Sync>),
}

impl Behavior {
    pub fn json(status: u16, body: Value) -> Behavior {
        Behavior::Json { status, body }
    }

    /// An OpenAI-style error: `{"error": {"message", "type", ...}}`.
    pub fn error(status: u16, message: &str) -> Behavior {
        Behavior::Json {
            status,
            body: openai::error_json(message, "mock_error"),
        }
    }

    pub fn sse(chunks: Vec<String>, delay_between: Duration) -> Behavior {
        Behavior::Sse {
            chunks,
            delay_between,
        }
    }

    pub fn delay(before_headers: Duration, then: Behavior) -> Behavior {
        Behavior::Delay {
            before_headers,
            then: Box::new(then),
        }
    }

    pub fn custom(f: impl Fn(&RecordedRequest) -> Behavior + Send + Sync + 'static) -> Behavior {
        Behavior::Custom(Arc::new(f))
    }
}

/// A request the mock received, recorded once its body was read (before answering).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Arrival order at this upstream, from 0.
    pub index: usize,
    /// Which connection carried it, in accept order from 0 (equal values: keep-alive reuse).
    pub connection: usize,
    pub method: String,
    /// The request target as sent, e.g. `/v1/chat/completions?x=1`.
    pub path: String,
    pub version: String,
    /// Lowercase names, trimmed values, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked framing removed).
    pub body: Bytes,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// First value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        http1::header_value(&self.headers, name)
    }

    /// Every value of header `name` (any case).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as JSON; panics with the body text if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "upstream request body is not JSON ({e}): {}",
                self.body_text()
            )
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One SSE response as the mock sent it, updated live while it streams.
#[derive(Debug, Clone)]
pub struct StreamLog {
    /// [`RecordedRequest::index`] of the request answered.
    pub request_index: usize,
    /// When each chunk's write began; no byte of chunk i left before `chunk_sent_at[i]`.
    pub chunk_sent_at: Vec<Instant>,
    /// When the `[DONE]` event's write began, if it got that far.
    pub done_sent_at: Option<Instant>,
    /// The whole response, `[DONE]` and terminating chunk included, was written. Set just
    /// after the last write, so a client can see the end first: wait for it with
    /// [`eventually`](super::eventually).
    pub completed: bool,
    /// The peer hung up (EOF or write error) before the stream was complete.
    pub peer_closed: bool,
}

/// A running mock upstream. Dropping it stops the server.
pub struct MockUpstream {
    state: Arc<State>,
    addr: SocketAddr,
    tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// A plain HTTP upstream on 127.0.0.1 at a free port.
    pub fn start(behavior: Behavior) -> MockUpstream {
        Self::launch(behavior, None)
    }

    /// A TLS upstream with a certificate for `localhost` and `127.0.0.1` signed by a new
    /// [`TestCa`], which is returned so the gateway can be told to trust it.
    pub fn start_tls(behavior: Behavior) -> (MockUpstream, TestCa) {
        let ca = TestCa::new();
        (Self::start_tls_with_ca(behavior, &ca), ca)
    }

    /// [`start_tls`](Self::start_tls) with a CA of the caller's (to share one among upstreams).
    pub fn start_tls_with_ca(behavior: Behavior, ca: &TestCa) -> MockUpstream {
        Self::launch(behavior, Some(acceptor_for(&ca.issue_localhost())))
    }

    fn launch(behavior: Behavior, acceptor: Option<Arc<SslAcceptor>>) -> MockUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("mock upstream address");
        let state = Arc::new(State::new(behavior, addr.port()));
        let (shutdown, shutdown_rx) = oneshot::channel();
        let tls = acceptor.is_some();
        let server_state = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mock-upstream-{}", addr.port()))
            .spawn(move || run_server(listener, server_state, acceptor, shutdown_rx))
            .expect("spawn mock upstream thread");
        MockUpstream {
            state,
            addr,
            tls,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub fn origin(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.port()),
            false => format!("http://127.0.0.1:{}", self.port()),
        }
    }

    /// The OpenAI base URL: [`origin`](Self::origin) + `/v1`.
    pub fn url(&self) -> String {
        format!("{}/v1", self.origin())
    }

    /// Replaces the behavior for requests that arrive from now on.
    pub fn set_behavior(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The most recent request; panics if there was none.
    pub fn last_request(&self) -> RecordedRequest {
        let requests = self.state.requests.lock().unwrap();
        requests
            .last()
            .cloned()
            .expect("the mock upstream received no request")
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Forgets recorded requests and streams (counters and indices keep going).
    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
        self.state.streams.lock().unwrap().clear();
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// SSE responses so far, in the order they started.
    pub fn streams(&self) -> Vec<StreamLog> {
        self.state.streams.lock().unwrap().clone()
    }

    /// How many times the peer hung up while a response was in progress (during a
    /// `Delay`, between SSE chunks, or on a failed write).
    pub fn disconnects(&self) -> usize {
        *self.state.disconnects.borrow()
    }

    /// Health probes answered so far. Probes (the gateway's `user-agent:
    /// tollgate-health-check` requests) get their own answer, are not recorded as
    /// requests and do not advance a [`Behavior::Sequence`].
    pub fn probe_count(&self) -> usize {
        *self.state.probes.borrow()
    }

    /// The status health probes get from now on (200 at first).
    pub fn set_probe_status(&self, status: u16) {
        self.state.probe_status.store(status, Ordering::SeqCst);
    }

    /// Waits until at least `n` probes were answered; false on timeout.
    pub async fn wait_for_probes(&self, n: usize, timeout: Duration) -> bool {
        wait_for_count(self.state.probes.subscribe(), n, timeout).await
    }

    /// Waits until at least `n` requests were recorded; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_for_count(self.state.requests_seen.subscribe(), n, timeout).await
    }

    /// Waits until the peer hung up mid-response at least `n` times; false on timeout.
    pub async fn wait_for_disconnects(&self, n: usize, timeout: Duration) -> bool {
        wait_for_count(self.state.disconnects.subscribe(), n, timeout).await
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Quick: the server thread only has to leave its accept loop.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn wait_for_count(mut rx: watch::Receiver<usize>, n: usize, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// What the server thread and the handle share.
struct State {
    port: u16,
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    streams: Mutex<Vec<StreamLog>>,
    next_request_index: AtomicUsize,
    connections: AtomicUsize,
    requests_seen: watch::Sender<usize>,
    disconnects: watch::Sender<usize>,
    /// Health probes answered (never recorded as requests).
    probes: watch::Sender<usize>,
    /// Status the health probes get.
    probe_status: std::sync::atomic::AtomicU16,
}

impl State {
    fn new(behavior: Behavior, port: u16) -> State {
        State {
            port,
            behavior: Mutex::new(behavior),
            requests: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            next_request_index: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            requests_seen: watch::Sender::new(0),
            disconnects: watch::Sender::new(0),
            probes: watch::Sender::new(0),
            probe_status: std::sync::atomic::AtomicU16::new(200),
        }
    }

    fn record(&self, wire: WireRequest, connection: usize) -> RecordedRequest {
        let request = RecordedRequest {
            index: self.next_request_index.fetch_add(1, Ordering::SeqCst),
            connection,
            method: wire.method,
            path: wire.path,
            version: wire.version,
            headers: wire.headers,
            body: Bytes::from(wire.body),
            received_at: Instant::now(),
        };
        self.requests.lock().unwrap().push(request.clone());
        self.requests_seen.send_modify(|n| *n += 1);
        request
    }

    fn note_disconnect(&self) {
        self.disconnects.send_modify(|n| *n += 1);
    }

    /// Starts a [`StreamLog`]; returns a handle to update it.
    fn open_stream(&self, request_index: usize) -> StreamId {
        let mut streams = self.streams.lock().unwrap();
        streams.push(StreamLog {
            request_index,
            chunk_sent_at: Vec::new(),
            done_sent_at: None,
            completed: false,
            peer_closed: false,
        });
        StreamId(request_index)
    }

    fn update_stream(&self, id: StreamId, update: impl FnOnce(&mut StreamLog)) {
        let mut streams = self.streams.lock().unwrap();
        // Found by request index, so clear_requests() mid-stream is harmless.
        if let Some(log) = streams
            .iter_mut()
            .rev()
            .find(|log| log.request_index == id.0)
        {
            update(log);
        }
    }

    fn mock_header(&self) -> (String, String) {
        (MOCK_HEADER.to_string(), self.port.to_string())
    }
}

#[derive(Clone, Copy)]
struct StreamId(usize);

/// The server thread: a current-thread runtime running the accept loop until shutdown.
fn run_server(
    listener: std::net::TcpListener,
    state: Arc<State>,
    acceptor: Option<Arc<SslAcceptor>>,
    shutdown: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("mock upstream runtime");
    runtime.block_on(accept_loop(listener, state, acceptor, shutdown));
    // Drops every connection task, closing their sockets.
    runtime.shutdown_background();
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<State>,
    acceptor: Option<Arc<SslAcceptor>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let connection = state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_socket(tcp, connection, state.clone(), acceptor.clone()));
            }
        }
    }
}

async fn serve_socket(
    tcp: TcpStream,
    connection: usize,
    state: Arc<State>,
    acceptor: Option<Arc<SslAcceptor>>,
) {
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        return serve_connection(Conn::new(tcp), connection, state).await;
    };
    let Ok(ssl) = Ssl::new(acceptor.context()) else {
        return;
    };
    let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, tcp) else {
        return;
    };
    if std::pin::Pin::new(&mut stream).accept().await.is_ok() {
        serve_connection(Conn::new(stream), connection, state).await;
    }
}

/// What happened to the connection after answering.
#[derive(PartialEq, Eq)]
enum Outcome {
    /// Answered in full; the connection may be reused.
    Answered,
    /// The behavior wants the connection closed.
    Close,
    /// The peer hung up mid-response (already counted).
    PeerClosed,
}

/// Serves requests on one connection until either side closes it.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Conn<S>,
    connection: usize,
    state: Arc<State>,
) {
    loop {
        let Ok(Some(wire)) = conn.read_request().await else {
            return;
        };
        let keep_alive = wire.wants_keep_alive();
        if wire.is_health_probe() {
            let status = state.probe_status.load(Ordering::SeqCst);
            let headers = vec![("content-type".to_string(), "application/json".to_string())];
            let body = br#"{"object":"list","data":[]}"#;
            let outcome = write_full(&mut conn, &state, status, headers, body).await;
            state.probes.send_modify(|n| *n += 1);
            match outcome {
                Outcome::Answered if keep_alive => continue,
                Outcome::PeerClosed => return,
                _ => return conn.shutdown().await,
            }
        }
        let request = state.record(wire, connection);
        let behavior = state.behavior.lock().unwrap().clone();
        match respond(&mut conn, &state, behavior, &request).await {
            Outcome::Answered if keep_alive => continue,
            Outcome::PeerClosed => return,
            _ => return conn.shutdown().await,
        }
    }
}

/// Resolves `behavior` for `request` (delays, sequences, closures) and writes the answer.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    mut behavior: Behavior,
    request: &RecordedRequest,
) -> Outcome {
    loop {
        behavior = match behavior {
            Behavior::Delay {
                before_headers,
                then,
            } => {
                if conn.pause_watching_peer(before_headers).await == Peer::Closed {
                    state.note_disconnect();
                    return Outcome::PeerClosed;
                }
                *then
            }
            Behavior::Sequence(list) => pick_in_sequence(list, request.index),
            Behavior::Custom(decide) => decide(request),
            Behavior::EchoChat => echo_chat(request),
            Behavior::Close => return Outcome::Close,
            Behavior::Garbage(bytes) => {
                let _ = conn.write_all(&bytes).await;
                return Outcome::Close;
            }
            Behavior::Endless {
                content_type,
                piece,
                every,
            } => return write_endless(conn, state, content_type, &piece, every).await,
            Behavior::Enormous {
                content_type,
                prefix,
                fill,
                total,
            } => return write_enormous(conn, state, content_type, &prefix, fill, total).await,
            Behavior::Truncated { declared, body } => {
                let mut bytes = head_200(state, "application/json", "content-length", declared);
                bytes.extend_from_slice(&body);
                return match send(conn, state, &bytes).await {
                    Ok(()) => Outcome::Close,
                    Err(closed) => closed,
                };
            }
            Behavior::Json { status, body } => {
                let headers = vec![("content-type".to_string(), "application/json".to_string())];
                return write_full(conn, state, status, headers, body.to_string().as_bytes()).await;
            }
            Behavior::Raw {
                status,
                headers,
                body,
            } => return write_full(conn, state, status, headers, &body).await,
            Behavior::Sse {
                chunks,
                delay_between,
            } => {
                return stream_sse(conn, state, request.index, &chunks, delay_between, true).await;
            }
            Behavior::SseAbort {
                chunks,
                delay_between,
            } => {
                return stream_sse(conn, state, request.index, &chunks, delay_between, false).await;
            }
        }
    }
}

fn pick_in_sequence(mut list: Vec<Behavior>, index: usize) -> Behavior {
    assert!(
        !list.is_empty(),
        "Behavior::Sequence needs at least one behavior"
    );
    let at = index.min(list.len() - 1);
    list.swap_remove(at)
}

/// [`Behavior::EchoChat`] for this request, as a concrete behavior.
fn echo_chat(request: &RecordedRequest) -> Behavior {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or(openai::MOCK_MODEL);
    if body["stream"].as_bool() == Some(true) {
        let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
        return Behavior::sse(
            openai::echo_stream_events(model, include_usage),
            Duration::ZERO,
        );
    }
    Behavior::json(200, openai::chat_completion_json(model, openai::ECHO_REPLY))
}

/// A 200 head of `content_type` framed by `framing` (`content-length` or
/// `transfer-encoding`) set to `value`.
fn head_200(state: &State, content_type: &str, framing: &str, value: impl ToString) -> Vec<u8> {
    let headers = vec![
        ("content-type".to_string(), content_type.to_string()),
        (framing.to_string(), value.to_string()),
        state.mock_header(),
    ];
    http1::response_head(200, &headers)
}

/// Writes `bytes`; a peer that hung up is noted, and is the outcome.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    bytes: &[u8],
) -> Result<(), Outcome> {
    conn.write_all(bytes).await.map_err(|_| {
        state.note_disconnect();
        Outcome::PeerClosed
    })
}

/// [`Behavior::Endless`]: a chunked 200 with `piece` every `every`, until the peer leaves.
async fn write_endless<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    content_type: &str,
    piece: &[u8],
    every: Duration,
) -> Outcome {
    if let Err(closed) = send(
        conn,
        state,
        &head_200(state, content_type, "transfer-encoding", "chunked"),
    )
    .await
    {
        return closed;
    }
    loop {
        if let Err(closed) = send(conn, state, &http1::chunk(piece)).await {
            return closed;
        }
        if conn.pause_watching_peer(every).await == Peer::Closed {
            state.note_disconnect();
            return Outcome::PeerClosed;
        }
    }
}

/// [`Behavior::Enormous`]: `total` bytes declared, `prefix` then `fill` bytes, as fast as
/// the peer reads.
async fn write_enormous<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    content_type: &str,
    prefix: &[u8],
    fill: u8,
    total: usize,
) -> Outcome {
    let mut head = head_200(state, content_type, "content-length", total);
    head.extend_from_slice(prefix);
    if let Err(closed) = send(conn, state, &head).await {
        return closed;
    }
    let block = vec![fill; 64 * 1024];
    let mut left = total.saturating_sub(prefix.len());
    while left > 0 {
        let n = left.min(block.len());
        if let Err(closed) = send(conn, state, &block[..n]).await {
            return closed;
        }
        left -= n;
    }
    Outcome::Answered
}

/// A complete response with Content-Length.
async fn write_full<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    status: u16,
    mut headers: Vec<(String, String)>,
    body: &[u8],
) -> Outcome {
    headers.push(("content-length".to_string(), body.len().to_string()));
    headers.push(state.mock_header());
    let mut bytes = http1::response_head(status, &headers);
    bytes.extend_from_slice(body);
    if conn.write_all(&bytes).await.is_err() {
        state.note_disconnect();
        return Outcome::PeerClosed;
    }
    Outcome::Answered
}

/// An SSE response, chunk by chunk, logging each write and watching for the peer leaving.
/// With `finish` false the stream stops after the last chunk and the connection is closed.
async fn stream_sse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    request_index: usize,
    chunks: &[String],
    delay_between: Duration,
    finish: bool,
) -> Outcome {
    let id = state.open_stream(request_index);
    let headers = vec![
        ("content-type".to_string(), "text/event-stream".to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
        ("transfer-encoding".to_string(), "chunked".to_string()),
        state.mock_header(),
    ];
    if conn
        .write_all(&http1::response_head(200, &headers))
        .await
        .is_err()
    {
        return stream_peer_closed(state, id);
    }
    for (i, event) in chunks.iter().enumerate() {
        if i > 0 && conn.pause_watching_peer(delay_between).await == Peer::Closed {
            return stream_peer_closed(state, id);
        }
        state.update_stream(id, |log| log.chunk_sent_at.push(Instant::now()));
        if conn
            .write_all(&http1::chunk(event.as_bytes()))
            .await
            .is_err()
        {
            return stream_peer_closed(state, id);
        }
    }
    if !finish {
        return Outcome::Close;
    }
    if !chunks.is_empty() && conn.pause_watching_peer(delay_between).await == Peer::Closed {
        return stream_peer_closed(state, id);
    }
    state.update_stream(id, |log| log.done_sent_at = Some(Instant::now()));
    let mut tail = http1::chunk(openai::SSE_DONE.as_bytes());
    tail.extend_from_slice(http1::LAST_CHUNK);
    if conn.write_all(&tail).await.is_err() {
        return stream_peer_closed(state, id);
    }
    state.update_stream(id, |log| log.completed = true);
    Outcome::Answered
}

fn stream_peer_closed(state: &State, id: StreamId) -> Outcome {
    state.update_stream(id, |log| log.peer_closed = true);
    state.note_disconnect();
    Outcome::PeerClosed
}
