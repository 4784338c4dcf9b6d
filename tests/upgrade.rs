//! Process lifecycle over real sockets: a graceful upgrade (a new process started with
//! `-u` takes the listening sockets over when the old one gets SIGQUIT) and a graceful
//! shutdown (SIGTERM). In both, a stream open at the switch completes.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::openai::*;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Every request and every wait is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The grace period in these configs (`server.grace_period_seconds`): longer than the
/// slow stream, which is cut if still open when it ends.
const GRACE_SECONDS: u64 = 4;
/// Chunks of the slow stream, and the pause before each (and before `[DONE]`).
const CHUNKS: usize = 8;
const CHUNK_DELAY: Duration = Duration::from_millis(250);

/// A config: one listener, short grace periods, `models` (YAML lines under `models:`)
/// all on pool `p` at `upstream`.
fn config(upstream: &MockUpstream, models: &[&str]) -> String {
    let models: String = models
        .iter()
        .map(|m| format!("  {m}:\n    targets: [{{pool: p, model: {m}}}]\n"))
        .collect();
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2, \
         grace_period_seconds: {GRACE_SECONDS}, graceful_shutdown_timeout_seconds: 1}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n{models}\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        upstream.url()
    )
}

/// An upstream where model `slow` streams [`CHUNKS`] chunks [`CHUNK_DELAY`] apart and
/// every other request is echoed.
fn upstream() -> MockUpstream {
    MockUpstream::start(Behavior::custom(|req| {
        if req.json()["model"] == "slow" {
            let events = (0..CHUNKS)
                .map(|i| sse_chat_chunk("s", &format!("w{i} ")))
                .collect();
            Behavior::sse(events, CHUNK_DELAY)
        } else {
            Behavior::EchoChat
        }
    }))
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The status of a chat request for `model` on a new connection (so that it goes to
/// whichever process accepts it now); `None` if the connection failed.
async fn status_on_new_connection(gw: &Gateway, model: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(model, false))
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

/// A stream for model `slow`, its first chunk read; the rest is read by the task.
async fn open_slow_stream(gw: &Gateway) -> tokio::task::JoinHandle<String> {
    let resp = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("slow", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let mut text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.contains("w0"), "{text}");
    tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Err(e) => {
                    text.push_str(&format!("\n<error: {e}>"));
                    break;
                }
            }
        }
        text
    })
}

/// Checks a whole slow stream: every chunk in order, then `[DONE]`.
fn assert_complete(text: &str) {
    let data = parse_sse_data(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let content: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let expected: String = (0..CHUNKS).map(|i| format!("w{i} ")).collect();
    assert_eq!(content, expected, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_the_sockets_over_and_the_open_stream_completes() {
    let upstream = upstream();
    let mut old = Gateway::start(&config(&upstream, &["gpt-4o", "slow"]));
    let stream = open_slow_stream(&old).await;

    // The new process knows one more model: that tells the two apart.
    let new = old.start_upgrade(&config(&upstream, &["gpt-4o", "slow", "only-new"]));
    let sock = old.upgrade_sock();
    assert!(
        eventually(TIMEOUT, || sock.exists()).await,
        "the new process never listened on the upgrade socket:\n{}",
        new.logs()
    );
    old.signal("QUIT");

    // The old process keeps accepting a few seconds (Pingora's close timeout), so a new
    // connection may still reach it for a while; the new process answers before long.
    let deadline = Instant::now() + TIMEOUT;
    while status_on_new_connection(&old, "only-new").await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the new process never answered:\n{}",
            new.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let text = tokio::time::timeout(TIMEOUT, stream)
        .await
        .unwrap()
        .unwrap();
    assert_complete(&text);

    // Close timeout (5 s) + grace period + runtime shutdown, with room to spare.
    let exited = old.wait_for_exit(TIMEOUT);
    assert!(
        exited.is_some_and(|s| s.success()),
        "old process: {exited:?}"
    );
    for i in 0..5 {
        assert_eq!(
            status_on_new_connection(&old, "only-new").await,
            Some(200),
            "request {i} after the old process left"
        );
    }
    let mut new = new;
    assert!(
        new.wait_for_exit(Duration::ZERO).is_none(),
        "the new process runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_open_stream_finish_then_exits_and_refuses_connections() {
    let upstream = upstream();
    let mut gw = Gateway::start(&config(&upstream, &["gpt-4o", "slow"]));
    let stream = open_slow_stream(&gw).await;
    let addr = gw.addr();
    let sent = Instant::now();
    gw.signal("TERM");

    let refused = eventually(TIMEOUT, || {
        matches!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    })
    .await;
    assert!(refused, "new connections are still accepted");

    let text = tokio::time::timeout(TIMEOUT, stream)
        .await
        .unwrap()
        .unwrap();
    assert_complete(&text);
    // The mock marks its stream complete just after its last write, which the client may
    // see first.
    assert!(
        eventually(TIMEOUT, || upstream.streams()[0].completed).await,
        "the upstream stream did not complete"
    );
    assert!(
        !upstream.streams()[0].peer_closed,
        "the upstream stream was cut"
    );

    // The grace period, then up to `graceful_shutdown_timeout_seconds`, plus slack.
    let exited = gw.wait_for_exit(Duration::from_secs(GRACE_SECONDS + 1 + 5));
    assert!(exited.is_some_and(|s| s.success()), "exit: {exited:?}");
    assert!(sent.elapsed() < Duration::from_secs(GRACE_SECONDS + 1 + 5));
}
