//! Hostile and broken clients against a running gateway: malformed and deeply nested
//! JSON, oversized and trickled bodies and heads, conflicting framing, obs-fold and bare
//! CR, slowloris, HTTP/2 stream floods and rapid resets, path tricks and odd methods.
//! Each gets its 4xx (or a closed connection where HTTP says so), and meanwhile a probe
//! client on its own connection keeps getting answers at normal latency.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const BODY_LIMIT: usize = 256 * 1024;
const HEADER_LIMIT: usize = 16 * 1024;
/// `limits.header_read_timeout`, `idle_timeout` and `body_read_timeout` in the config.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// The probe's bound on one answer: far above a mock answer's ~1 ms, far below any
/// timeout in play; a gateway stalled by a hostile client misses it.
const PROBE_MAX: Duration = Duration::from_millis(750);

fn config(extra_listener: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n{extra_listener}\
         limits: {{max_body_bytes: {BODY_LIMIT}, body_read_timeout: 2s, header_read_timeout: 1s, idle_timeout: 2s, max_header_bytes: {HEADER_LIMIT}}}\n\
         models:\n  gpt-4o: {{targets: [{{pool: local}}]}}\n\
         pools:\n  local: {{provider: mock}}\n"
    )
}

fn gateway() -> Gateway {
    Gateway::start(&config(""))
}

/// A client on its own keep-alive connection asking for a completion every 20 ms while a
/// test runs; [`Probe::finish`] checks every answer was a 200 within [`PROBE_MAX`].
struct Probe {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<(u16, Duration)>>,
}

impl Probe {
    fn start(gw: &Gateway) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let url = gw.url("/v1/chat/completions");
        let flag = stop.clone();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seen = Vec::new();
            let body =
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "probe"}]});
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                let status = match client.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                seen.push((status, start.elapsed()));
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Probe { stop, count, task }
    }

    async fn finish(self) {
        // A quick test still gets a few probes in.
        let count = self.count.clone();
        eventually(Duration::from_secs(5), || {
            count.load(Ordering::Relaxed) >= 5
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.unwrap();
        assert!(seen.len() >= 5, "the probe ran {} times", seen.len());
        let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
        assert!(failed.is_empty(), "probe requests failed: {failed:?}");
        let slowest = seen.iter().map(|(_, d)| *d).max().unwrap();
        assert!(
            slowest < PROBE_MAX,
            "a probe request took {slowest:?} ({} requests)",
            seen.len()
        );
    }
}

/// Sends `bytes` on a new connection (blocking, off the runtime) and returns the answer.
async fn raw(gw: &Gateway, bytes: Vec<u8>) -> Vec<u8> {
    let addr = gw.addr();
    tokio::task::spawn_blocking(move || raw_request(addr, &bytes))
        .await
        .unwrap()
}

/// The OpenAI `error.code` of a raw response whose status must be `status`.
fn raw_error_code(resp: &[u8], status: u16) -> String {
    let text = String::from_utf8_lossy(resp);
    assert_eq!(raw_status(resp), Some(status), "response:\n{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = decode_chunked_if_needed(&text, body);
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}):\n{text}"));
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code:\n{text}"))
        .to_owned()
}

fn decode_chunked_if_needed(head_and_body: &str, body: &str) -> String {
    if !head_and_body
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn chat_request(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// How many responses (status lines) are in `resp`.
fn responses_in(resp: &[u8]) -> usize {
    String::from_utf8_lossy(resp).matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn malformed_and_deeply_nested_json_gets_400() {
    let gw = gateway();
    let probe = Probe::start(&gw);
    let nested =
        |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("100,000 nested arrays", nested("[", "]", 100_000).into_bytes(), "invalid_request"),
        // The gateway's parser skips unknown fields without recursing, so depth costs it
        // nothing; the request then lacks its model.
        ("40,000 nested objects", format!("{}1{}", "{\"a\":".repeat(40_000), "}".repeat(40_000)).into_bytes(), "invalid_request"),
        // Message content is passed on as it came (raw), without recursing; the mock
        // upstream, like a real one, refuses it with 400.
        (
            "nested arrays inside a message",
            format!(
                "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":{}}}]}}",
                nested("[", "]", 50_000)
            )
            .into_bytes(),
            "invalid_request",
        ),
        (
            "invalid UTF-8 in a string",
            b"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\xff\"}]}".to_vec(),
            "invalid_json",
        ),
        (
            "a number out of range",
            br#"{"model":"gpt-4o","max_tokens":1e400,"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            "invalid_request",
        ),
        (
            "a duplicate model key",
            br#"{"model":"gpt-4o","model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            "invalid_request",
        ),
        ("a NUL byte", b"{\"model\":\"gpt-4o\"\x00}".to_vec(), "invalid_json"),
        ("a UTF-8 BOM", b"\xef\xbb\xbf{\"model\":\"gpt-4o\",\"messages\":[]}".to_vec(), "invalid_json"),
        ("messages as a string", br#"{"model":"gpt-4o","messages":"hi"}"#.to_vec(), "invalid_request"),
        ("trailing garbage", br#"{"model":"gpt-4o","messages":[]} x"#.to_vec(), "invalid_json"),
    ];
    let mut wrong = Vec::new();
    for (name, body, want) in cases {
        let resp = raw(&gw, chat_request(&body, "")).await;
        let code = raw_error_code(&resp, 400);
        if code != want {
            wrong.push(format!("{name}: {code}, not {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    probe.finish().await;
}

#[tokio::test]
async fn oversized_and_slow_bodies_get_413_and_408() {
    let gw = gateway();
    let probe = Probe::start(&gw);

    // Declared too large: refused before a byte of the body is read.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        BODY_LIMIT * 4
    );
    let resp = raw(&gw, head.into_bytes()).await;
    assert_eq!(raw_error_code(&resp, 413), "request_too_large");

    // Over the limit, chunked and sent slowly: refused as soon as it passes the limit,
    // long before the body timeout.
    let addr = gw.addr();
    let (resp, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let start = Instant::now();
        let chunk = vec![b' '; 32 * 1024];
        for _ in 0..BODY_LIMIT / chunk.len() + 4 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || s.write_all(&chunk).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (out, start.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(raw_error_code(&resp, 413), "request_too_large");
    assert!(
        took < BODY_TIMEOUT + Duration::from_secs(1),
        "took {took:?}"
    );

    // Under the limit but trickled: 408 at the body timeout.
    let (resp, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n").unwrap();
        let start = Instant::now();
        let mut s2 = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..60 {
                if s2.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let took = start.elapsed();
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        (out, took)
    })
    .await
    .unwrap();
    assert_eq!(raw_error_code(&resp, 408), "request_timeout");
    assert!(
        took >= BODY_TIMEOUT - Duration::from_millis(100) && took < BODY_TIMEOUT * 2,
        "took {took:?}"
    );
    probe.finish().await;
}

#[tokio::test]
async fn abusive_heads_and_conflicting_framing_are_refused() {
    let gw = gateway();
    let probe = Probe::start(&gw);
    let ok_body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

    // Too many headers (more than the parser takes): 400.
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(&gw, chat_request(ok_body, &many)).await;
    assert_eq!(raw_status(&resp), Some(400), "300 headers");

    // A head over limits.max_header_bytes: 431, OpenAI-shaped.
    let long = format!("X-Long: {}\r\n", "a".repeat(HEADER_LIMIT * 2));
    let resp = raw(&gw, chat_request(ok_body, &long)).await;
    assert_eq!(raw_error_code(&resp, 431), "request_header_too_large");

    // A head over Pingora's own 1 MiB bound: 400 (or the connection closed).
    let huge = format!("X-Huge: {}\r\n", "a".repeat(2 * 1024 * 1024));
    let resp = raw(&gw, chat_request(ok_body, &huge)).await;
    assert!(
        matches!(raw_status(&resp), Some(400) | None),
        "2 MiB header: {:?}",
        raw_status(&resp)
    );

    // Content-Length values that disagree, or that are not a number: 400 and closed.
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 6, 5",
        "Content-Length: +5",
        "Content-Length: 0x5",
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{cl}\r\n\r\n{{}}\r\n"
        );
        let resp = raw(&gw, req.into_bytes()).await;
        assert_eq!(
            raw_status(&resp),
            Some(400),
            "{cl}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(responses_in(&resp), 1, "{cl}");
    }
    // The same Content-Length twice is one length (RFC 9110 §8.6): served.
    let req = chat_request(ok_body, &format!("Content-Length: {}\r\n", ok_body.len()));
    assert_eq!(
        raw_status(&raw(&gw, req).await),
        Some(200),
        "repeated equal Content-Length"
    );

    // Transfer-Encodings other than exactly chunked: 400 and closed.
    for te in [
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        "xchunked",
        "chunked\r\nTransfer-Encoding: chunked",
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: {te}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        );
        let resp = raw(&gw, req.into_bytes()).await;
        assert_eq!(
            raw_status(&resp),
            Some(400),
            "TE {te}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(responses_in(&resp), 1, "TE {te}");
    }

    // Content-Length beside Transfer-Encoding (a smuggling attempt): the chunked body is
    // the body, and the connection closes after the answer, so the request hidden after
    // it is never read as a second one.
    let chunked_body = format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        ok_body.len(),
        String::from_utf8_lossy(ok_body)
    );
    let smuggle = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}\
         GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let resp = raw(&gw, smuggle.into_bytes()).await;
    assert_eq!(
        raw_status(&resp),
        Some(200),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(responses_in(&resp), 1, "{}", String::from_utf8_lossy(&resp));
    assert!(!String::from_utf8_lossy(&resp).contains("\"object\":\"list\""));

    // Line folding, bare CR, NUL, whitespace before the colon, bad names: 400.
    for (name, header) in [
        ("obs-fold", "X-A: one\r\n two\r\n"),
        ("bare CR", "X-A: one\rtwo\r\n"),
        ("NUL in a value", "X-A: one\0two\r\n"),
        ("space before the colon", "X-A : one\r\n"),
        ("a space in a name", "X A: one\r\n"),
        ("a name of non-token bytes", "X(A): one\r\n"),
    ] {
        let resp = raw(&gw, chat_request(ok_body, header)).await;
        assert_eq!(
            raw_status(&resp),
            Some(400),
            "{name}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    // Bare LF line endings are HTTP/1.1 a server may accept (RFC 9112 §2.2): served.
    let lf = format!(
        "POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {}\nConnection: close\n\n{}",
        ok_body.len(),
        String::from_utf8_lossy(ok_body)
    );
    assert_eq!(
        raw_status(&raw(&gw, lf.into_bytes()).await),
        Some(200),
        "bare LF"
    );
    // A request line that is not one: 400.
    for line in [
        "GARBAGE\r\n\r\n",
        "GET /v1/models HTTP/9.9\r\n\r\n",
        "GET /v1/models\r\n\r\n",
    ] {
        let resp = raw(&gw, line.as_bytes().to_vec()).await;
        assert!(
            matches!(raw_status(&resp), Some(400) | Some(505) | None),
            "{line:?}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    probe.finish().await;
}

/// Connects, sends `head_part`, then one byte of `trickle` per `every` until the gateway
/// closes; returns how long after connecting it closed and what it answered.
fn trickle(
    addr: std::net::SocketAddr,
    first: &[u8],
    trickle: &[u8],
    every: Duration,
) -> (Duration, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    s.write_all(first).unwrap();
    let mut reader = s.try_clone().unwrap();
    let trickled = trickle.to_vec();
    let writer = std::thread::spawn(move || {
        for b in trickled {
            std::thread::sleep(every);
            if s.write_all(&[b]).is_err() {
                return;
            }
        }
    });
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let took = start.elapsed();
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    (took, out)
}

/// How many file descriptors the gateway process holds.
fn open_fds(gw: &Gateway) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", gw.pid())).map_or(0, |d| d.count())
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_their_deadlines() {
    let gw = gateway();
    let probe = Probe::start(&gw);
    let addr = gw.addr();
    let endless_head: Vec<u8> = b"X-Slow: "
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'a', 200))
        .collect();
    let between = |took: Duration, low: Duration, high: Duration| took >= low && took < high;

    // A head trickled a byte every 100 ms: cut at header_read_timeout, counted from the
    // accept, whatever the pace.
    let (took, out) = tokio::task::spawn_blocking({
        let h = endless_head.clone();
        move || {
            trickle(
                addr,
                b"GET /v1/models HTTP/1.1\r\n",
                &h,
                Duration::from_millis(100),
            )
        }
    })
    .await
    .unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(
        between(
            took,
            HEAD_TIMEOUT - Duration::from_millis(100),
            HEAD_TIMEOUT * 3
        ),
        "head trickle closed after {took:?}"
    );

    // A connection that sends nothing: closed at the same deadline, without an answer.
    let (took, out) = tokio::task::spawn_blocking(move || trickle(addr, b"", b"", Duration::ZERO))
        .await
        .unwrap();
    assert!(out.is_empty());
    assert!(
        between(
            took,
            HEAD_TIMEOUT - Duration::from_millis(100),
            HEAD_TIMEOUT * 3
        ),
        "silent connection closed after {took:?}"
    );

    // After a first request is answered, the next head is trickled: cut one
    // header_read_timeout after its first byte.
    let (took, out) = tokio::task::spawn_blocking({
        let h = endless_head.clone();
        move || {
            let mut first =
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\n".to_vec();
            first.truncate(first.len());
            trickle(addr, &first, &h, Duration::from_millis(100))
        }
    })
    .await
    .unwrap();
    assert_eq!(responses_in(&out), 1, "{}", String::from_utf8_lossy(&out));
    assert!(
        between(
            took,
            HEAD_TIMEOUT - Duration::from_millis(100),
            HEAD_TIMEOUT * 3
        ),
        "second head closed after {took:?}"
    );

    // A kept-alive connection left idle: closed at idle_timeout.
    let (took, out) = tokio::task::spawn_blocking(move || {
        trickle(
            addr,
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
            b"",
            Duration::ZERO,
        )
    })
    .await
    .unwrap();
    assert_eq!(responses_in(&out), 1);
    assert!(
        between(
            took,
            IDLE_TIMEOUT - Duration::from_millis(100),
            IDLE_TIMEOUT * 2
        ),
        "idle connection closed after {took:?}"
    );

    // 200 slowloris connections at once: all cut, none served, the probe unaffected and
    // the descriptors given back.
    let before = open_fds(&gw);
    let mut handles = Vec::new();
    for _ in 0..200 {
        let h = endless_head.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            trickle(
                addr,
                b"POST /v1/chat/completions HTTP/1.1\r\n",
                &h,
                Duration::from_millis(200),
            )
        }));
    }
    for h in handles {
        let (took, out) = h.await.unwrap();
        assert!(out.is_empty());
        assert!(took < HEAD_TIMEOUT * 4, "closed after {took:?}");
    }
    assert!(
        eventually(Duration::from_secs(3), || open_fds(&gw) <= before + 2).await,
        "descriptors: {before} before, {} after",
        open_fds(&gw)
    );
    probe.finish().await;
}

#[tokio::test]
async fn paths_with_tricks_and_methods_not_allowed() {
    let gw = gateway();
    let probe = Probe::start(&gw);
    // (request target, status, error code or "" for a success)
    let targets: &[(&str, u16, &str)] = &[
        ("/v1/models/..%2F..%2Fetc%2Fpasswd", 404, "model_not_found"),
        ("/v1/models/../../etc/passwd", 404, "model_not_found"),
        ("/v1/models/%2e%2e", 404, "model_not_found"),
        ("/v1/models/gpt-4o%00", 404, "model_not_found"),
        ("/v1/models/%ff%fe", 404, "unknown_url"),
        ("/v1/models/gpt-4o%2F..%2Fgpt-4o", 404, "model_not_found"),
        ("/v1/chat/completions/../../v1/models", 404, "unknown_url"),
        ("//v1/models", 404, "unknown_url"),
        ("/V1/MODELS", 404, "unknown_url"),
        ("/v1/models/%67pt-4o", 200, ""),
        ("/v1/models/gpt-4o?x=../../", 200, ""),
    ];
    for (target, status, code) in targets {
        let resp = raw(
            &gw,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
        )
        .await;
        if code.is_empty() {
            assert_eq!(raw_status(&resp), Some(*status), "{target}");
            let text = String::from_utf8_lossy(&resp);
            assert!(text.contains("\"id\":\"gpt-4o\""), "{target}: {text}");
        } else {
            assert_eq!(raw_error_code(&resp, *status), *code, "{target}");
        }
    }
    // A very long path is refused, not echoed back whole.
    let long = format!("/v1/{}", "a".repeat(8000));
    let resp = raw(
        &gw,
        format!("GET {long} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
    )
    .await;
    assert_eq!(raw_error_code(&resp, 404), "unknown_url");
    assert!(resp.len() < 4096, "a {} byte answer", resp.len());

    // Methods: 405 with Allow for every route that exists.
    for (method, path, allow) in [
        ("PUT", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/chat/completions", "POST"),
        ("PATCH", "/v1/embeddings", "POST"),
        ("OPTIONS", "/v1/completions", "POST"),
        ("TRACE", "/v1/chat/completions", "POST"),
        ("FOO", "/v1/chat/completions", "POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/gpt-4o", "GET"),
    ] {
        let resp = raw(&gw, format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()).await;
        assert_eq!(
            raw_error_code(&resp, 405),
            "method_not_allowed",
            "{method} {path}"
        );
        let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
        assert!(
            text.contains(&format!("\r\nallow: {}", allow.to_ascii_lowercase())),
            "{method} {path}: {text}"
        );
    }
    // CONNECT is never tunnelled.
    let resp = raw(
        &gw,
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n".to_vec(),
    )
    .await;
    assert!(
        matches!(raw_status(&resp), Some(400 | 405)),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    probe.finish().await;
}

/// The gateway with a second, TLS listener offering HTTP/2, and that listener's port.
fn h2_gateway(ca: &TestCa) -> (Gateway, u16) {
    let cert = ca.issue_localhost();
    let tls_port = free_port();
    let listener = format!(
        "  - address: 127.0.0.1:{tls_port}\n    tls: {{cert_file: '{}', key_file: '{}'}}\n    http2: true\n",
        cert.cert_path.display(),
        cert.key_path.display()
    );
    (Gateway::start(&config(&listener)), tls_port)
}

/// A raw HTTP/2 connection to `port`, trusting `ca`.
async fn h2_connect(ca: &TestCa, port: u16) -> h2::client::SendRequest<bytes::Bytes> {
    let mut connector =
        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    connector.set_ca_file(ca.ca_pem_path()).unwrap();
    connector.set_alpn_protos(b"\x02h2").unwrap();
    let ssl = connector
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut tls).connect().await.unwrap();
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn h2_chat(port: u16, len: usize) -> http::Request<()> {
    http::Request::post(format!("https://localhost:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("content-length", len)
        .body(())
        .unwrap()
}

#[tokio::test]
async fn http2_stream_floods_and_rapid_resets_leave_the_gateway_serving() {
    let ca = TestCa::new();
    let (gw, tls_port) = h2_gateway(&ca);
    let probe = Probe::start(&gw);

    // 1,000 requests at once over one HTTP/2 connection: every one answered.
    let client = ca.reqwest_client();
    let url = format!("https://localhost:{tls_port}/v1/chat/completions");
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "many"}]});
    // One request first, so the client has its HTTP/2 connection before the flood.
    let first = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    let _ = first.bytes().await;
    let answers = futures_util::future::join_all((0..1000).map(|_| {
        let req = client.post(&url).json(&body).send();
        async move {
            let r = req.await.unwrap();
            (r.version(), r.status().as_u16())
        }
    }))
    .await;
    assert!(answers.iter().all(|(v, _)| *v == reqwest::Version::HTTP_2));
    let ok = answers.iter().filter(|(_, s)| *s == 200).count();
    assert_eq!(ok, 1000, "{:?}", answers.iter().find(|(_, s)| *s != 200));

    // Rapid reset: 5,000 streams opened and cancelled at once. The gateway may end that
    // connection (GOAWAY), but keeps serving everyone else.
    let send = h2_connect(&ca, tls_port).await;
    let mut opened = 0;
    for _ in 0..5000 {
        match send.clone().ready().await {
            Ok(mut ready) => match ready.send_request(h2_chat(tls_port, 10), false) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    opened += 1;
                }
                Err(_) => break,
            },
            Err(_) => break,
        }
    }
    assert!(opened > 0);
    let fresh = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(fresh.status(), 200);

    // A body over the limit on a stream: 413 on that stream, the connection goes on.
    let mut send = h2_connect(&ca, tls_port).await;
    let (resp, mut stream) = send
        .send_request(h2_chat(tls_port, BODY_LIMIT * 2), false)
        .unwrap();
    let _ = stream.send_data(bytes::Bytes::from(vec![b' '; 1024]), false);
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let again = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(again.status(), 200);
    probe.finish().await;
}
