//! `bench-upstream`: a deliberately cheap mock of an OpenAI-compatible upstream, for the
//! load harness (bench/run.sh). It must cost far less than the proxies it helps measure,
//! so every response is rendered once at start-up and requests are parsed only as far as
//! needed:
//!
//! - `POST /v1/chat/completions` whose body contains `"stream":true` (or `"stream": true`):
//!   an SSE stream of `--chunks` `chat.completion.chunk` events, a final usage event and
//!   `data: [DONE]`, sent with chunked transfer-encoding, one write per event, each after
//!   `--chunk-delay-ms` (0: no pause). The response header goes out at once, so time to
//!   first byte and time to first token differ by one chunk delay.
//! - any other `POST /v1/chat/completions`: a canned `chat.completion` with `usage`.
//! - `GET /health`: 200.
//! - For the soak run (bench/soak.sh), an unreliable upstream: `--fail-every N` answers
//!   every Nth chat request with a 503 and an OpenAI error body, and `--cut-every N` cuts
//!   every Nth stream after its first chunks (the connection closes mid-body).
//!
//! HTTP/1.1 with keep-alive, any number of requests per connection (pipelined ones too);
//! request bodies must carry `Content-Length` (the gateway and the load generators always
//! send it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    name = "bench-upstream",
    about = "Fast mock OpenAI upstream for the load harness"
)]
struct Args {
    /// Address to listen on (loopback only: this is a benchmark tool).
    #[arg(long, default_value = "127.0.0.1:19101")]
    listen: SocketAddr,
    /// Content chunks per streamed response (before the usage chunk and `[DONE]`).
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// Pause before each streamed chunk, in milliseconds (the "slow mock").
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Runtime worker threads; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Answer every Nth chat request with 503 (0: never).
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
    /// Cut every Nth stream after two chunks, closing the connection (0: never).
    #[arg(long, default_value_t = 0)]
    cut_every: u64,
}

/// Every byte the mock ever sends, rendered once.
struct Canned {
    completion: Vec<u8>,
    stream_head: Vec<u8>,
    /// One chunked-encoding frame per SSE event, the usage event included.
    stream_frames: Vec<Vec<u8>>,
    /// `data: [DONE]` and the terminating zero-length chunk.
    stream_tail: Vec<u8>,
    health: Vec<u8>,
    unavailable: Vec<u8>,
    not_found: Vec<u8>,
    bad_request: Vec<u8>,
    delay: Duration,
    fail_every: u64,
    cut_every: u64,
    /// Chat requests and streams so far, for `--fail-every` and `--cut-every`.
    requests: AtomicU64,
    streams: AtomicU64,
}

const MODEL: &str = "mock-upstream";
const CREATED: u64 = 1_700_000_000;

impl Canned {
    fn new(args: &Args) -> Canned {
        let (chunks, delay) = (args.chunks, Duration::from_millis(args.chunk_delay_ms));
        let completion_body = serde_json::json!({
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! This is a canned answer from the benchmark mock upstream. \
                                It is about as long as a short real reply.",
                    "refusal": null
                },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 12, "completion_tokens": 24, "total_tokens": 36}
        })
        .to_string();
        let completion = response(
            "200 OK",
            "application/json",
            completion_body.as_bytes(),
            "x-request-id: mock-req\r\n",
        );

        let stream_head = b"HTTP/1.1 200 OK\r\n\
            content-type: text/event-stream; charset=utf-8\r\n\
            cache-control: no-cache\r\n\
            x-request-id: mock-req\r\n\
            transfer-encoding: chunked\r\n\r\n"
            .to_vec();
        let mut stream_frames = Vec::with_capacity(chunks + 1);
        for i in 0..chunks {
            let delta = if i == 0 {
                serde_json::json!({"role": "assistant", "content": ""})
            } else {
                serde_json::json!({"content": format!(" tok{i}")})
            };
            let finish = if i + 1 == chunks {
                serde_json::json!("stop")
            } else {
                serde_json::Value::Null
            };
            let event = serde_json::json!({
                "id": "chatcmpl-bench0000000000000000000000",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            });
            stream_frames.push(chunk_frame(format!("data: {event}\n\n").as_bytes()));
        }
        let usage = serde_json::json!({
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        });
        stream_frames.push(chunk_frame(format!("data: {usage}\n\n").as_bytes()));
        let mut stream_tail = chunk_frame(b"data: [DONE]\n\n");
        stream_tail.extend_from_slice(b"0\r\n\r\n");

        Canned {
            completion,
            stream_head,
            stream_frames,
            stream_tail,
            health: response("200 OK", "application/json", br#"{"status":"ok"}"#, ""),
            unavailable: response(
                "503 Service Unavailable",
                "application/json",
                br#"{"error":{"message":"the mock is failing on purpose","type":"server_error","param":null,"code":"mock_failure"}}"#,
                "",
            ),
            not_found: response(
                "404 Not Found",
                "application/json",
                br#"{"error":{"message":"not found","type":"invalid_request_error"}}"#,
                "",
            ),
            bad_request: response(
                "400 Bad Request",
                "application/json",
                br#"{"error":{"message":"bad request","type":"invalid_request_error"}}"#,
                "connection: close\r\n",
            ),
            delay,
            fail_every: args.fail_every,
            cut_every: args.cut_every,
            requests: AtomicU64::new(0),
            streams: AtomicU64::new(0),
        }
    }

    /// Whether this is the Nth of `every` (0: never).
    fn nth(counter: &AtomicU64, every: u64) -> bool {
        every > 0 && (counter.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every)
    }
}

fn response(status: &str, content_type: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn chunk_frame(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let canned = Arc::new(Canned::new(&args));
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!(
            "bench-upstream: listening on {} (chunks {}, chunk delay {} ms, threads {}, fail every {}, cut every {})",
            args.listen,
            args.chunks,
            args.chunk_delay_ms,
            args.threads,
            args.fail_every,
            args.cut_every
        );
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("bench-upstream: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let canned = Arc::clone(&canned);
            tokio::spawn(async move {
                // A client that goes away mid-stream is normal (cancellation tests).
                let _ = serve_connection(stream, &canned).await;
            });
        }
    })
}

/// What a parsed request asks for.
enum Answer {
    Completion,
    Stream,
    Health,
    Unavailable,
    NotFound,
    BadRequest,
}

/// Serves requests on one connection until the client closes it.
async fn serve_connection(mut stream: TcpStream, canned: &Canned) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut filled = 0usize;
    loop {
        // Parse as many complete requests as the buffer holds.
        let (answer, consumed, close) = loop {
            if let Some(parsed) = parse_request(&buf[..filled]) {
                break parsed;
            }
            if filled == buf.capacity() {
                if buf.capacity() >= 64 * 1024 * 1024 {
                    return Ok(()); // absurd request: drop the connection
                }
                buf.reserve(buf.capacity());
            }
            buf.resize(buf.capacity(), 0);
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        };
        let answer = match answer {
            Answer::Completion | Answer::Stream
                if Canned::nth(&canned.requests, canned.fail_every) =>
            {
                Answer::Unavailable
            }
            other => other,
        };
        match answer {
            Answer::Completion => stream.write_all(&canned.completion).await?,
            Answer::Unavailable => stream.write_all(&canned.unavailable).await?,
            Answer::Health => stream.write_all(&canned.health).await?,
            Answer::NotFound => stream.write_all(&canned.not_found).await?,
            Answer::BadRequest => {
                stream.write_all(&canned.bad_request).await?;
                return Ok(());
            }
            Answer::Stream => {
                stream.write_all(&canned.stream_head).await?;
                let cut = Canned::nth(&canned.streams, canned.cut_every);
                for (i, frame) in canned.stream_frames.iter().enumerate() {
                    if cut && i == 2 {
                        return Ok(()); // mid-body: no terminating chunk
                    }
                    if !canned.delay.is_zero() {
                        tokio::time::sleep(canned.delay).await;
                    }
                    stream.write_all(frame).await?;
                }
                stream.write_all(&canned.stream_tail).await?;
            }
        }
        if close {
            return Ok(());
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
    }
}

/// Parses one request at the start of `data`: `None` until it is complete, else what to
/// answer, how many bytes it used and whether the client asked to close.
fn parse_request(data: &[u8]) -> Option<(Answer, usize, bool)> {
    let head_end = find(data, b"\r\n\r\n")? + 4;
    let head = &data[..head_end];
    let line_end = find(head, b"\r\n")?;
    let mut parts = head[..line_end].split(|&b| b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Some((Answer::BadRequest, data.len(), true));
    };
    let mut content_length = 0usize;
    let mut close = false;
    for line in head[line_end + 2..].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) => content_length = n,
                None => return Some((Answer::BadRequest, data.len(), true)),
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Not needed by any client of the harness.
            return Some((Answer::BadRequest, data.len(), true));
        }
    }
    let end = head_end + content_length;
    if data.len() < end {
        return None;
    }
    let body = &data[head_end..end];
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let answer = match (method, path) {
        (b"POST", b"/v1/chat/completions") => {
            if find(body, b"\"stream\":true").is_some() || find(body, b"\"stream\": true").is_some()
            {
                Answer::Stream
            } else {
                Answer::Completion
            }
        }
        (b"GET", b"/health") => Answer::Health,
        _ => Answer::NotFound,
    };
    Some((answer, end, close))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if first.is_ascii_whitespace() {
            v = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = v {
        if last.is_ascii_whitespace() {
            v = rest;
        } else {
            break;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_requests() {
        let one = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"stream\":true}";
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        let (answer, used, close) = parse_request(&two).expect("complete");
        assert!(matches!(answer, Answer::Stream));
        assert_eq!(used, one.len());
        assert!(!close);
        let (answer, _, close) = parse_request(&two[used..]).expect("complete");
        assert!(matches!(answer, Answer::Health));
        assert!(close);
    }

    #[test]
    fn every_nth_is_every_nth() {
        let counter = AtomicU64::new(0);
        let hits: Vec<bool> = (0..6).map(|_| Canned::nth(&counter, 3)).collect();
        assert_eq!(hits, [false, false, true, false, false, true]);
        assert!(!(0..5).any(|_| Canned::nth(&counter, 0)));
    }

    #[test]
    fn waits_for_the_whole_body() {
        let partial = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 10\r\n\r\n{\"a\":";
        assert!(parse_request(partial).is_none());
    }
}
