//! Upstreams that misbehave at the wire: garbage instead of HTTP, a response that never
//! ends, an enormous response, a stream that stalls, a TLS handshake that fails. Each
//! gets a clear OpenAI error (or error event) in bounded time, the gateway's memory stays
//! bounded, and every fault is counted: in `tollgate_upstream_failures_total` and in the
//! endpoint's circuit breaker, which opens after repeated faults.

mod common;

use std::time::{Duration, Instant};

use common::openai::*;
use common::*;
use serde_json::{Value, json};

const MAX_RESPONSE: usize = 1024 * 1024;
/// Pools' `timeouts.total`: the longest any exchange may take.
const TOTAL: Duration = Duration::from_secs(3);
/// Pools' `timeouts.idle`: the longest silence inside a body.
const IDLE: Duration = Duration::from_secs(1);
const ADMIN_TOKEN: &str = "faults-admin-token";

struct Faults {
    gw: Gateway,
    admin_port: u16,
    _mocks: Vec<MockUpstream>,
}

/// One model (and pool, of one endpoint) per fault.
fn start(faults: Vec<(&str, String, Option<MockUpstream>)>) -> Faults {
    let admin_port = free_port();
    let mut models = String::new();
    let mut pools = String::new();
    let mut mocks = Vec::new();
    for (name, url, mock) in faults {
        models.push_str(&format!("  {name}: {{targets: [{{pool: {name}}}]}}\n"));
        pools.push_str(&format!(
            "  {name}:\n    provider: openai\n    endpoints: [{{url: '{url}'}}]\n\
             \x20   timeouts: {{connect: 1s, first_byte: 2s, idle: 1s, total: 3s}}\n\
             \x20   max_response_bytes: {MAX_RESPONSE}\n\
             \x20   retry: {{attempts: 1}}\n\
             \x20   breaker: {{consecutive_failures: 3, open_for: 60s}}\n\
             \x20   health_check: {{enabled: false}}\n"
        ));
        mocks.extend(mock);
    }
    let yaml = format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         admin: {{address: '127.0.0.1:{admin_port}', token: {ADMIN_TOKEN}}}\n\
         models:\n{models}pools:\n{pools}"
    );
    Faults {
        gw: Gateway::start(&yaml),
        admin_port,
        _mocks: mocks,
    }
}

impl Faults {
    async fn chat(&self, model: &str, stream: bool) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.gw.url("/v1/chat/completions"))
            .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The breaker state of the pool's one endpoint, from `/admin/pools`.
    async fn breaker(&self, pool: &str) -> String {
        let pools: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/admin/pools", self.admin_port))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list = pools["data"].as_array().expect("pools list");
        let p = list
            .iter()
            .find(|p| p["name"] == pool)
            .unwrap_or_else(|| panic!("no pool {pool}: {pools}"));
        p["endpoints"][0]["breaker"].to_string()
    }

    /// The gateway's peak resident memory so far, in MiB.
    fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.gw.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024
    }
}

/// A server on a free port that writes `bytes` to each connection as soon as it is
/// accepted, then closes it, whatever was sent (as a plain HTTP server answers a TLS
/// ClientHello). Its thread ends with the test process.
fn answers_on_accept(bytes: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().take(1000).flatten() {
            use std::io::Write;
            let _ = conn.write_all(bytes);
        }
    });
    port
}

/// The sum of a counter's samples whose labels include every one of `labels`.
fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Reads a whole event stream; returns its `data:` payloads.
async fn stream_events(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    parse_sse_data(&text)
}

#[tokio::test]
async fn wire_faults_get_clear_errors_in_bounded_time_and_memory() {
    let garbage = MockUpstream::start(Behavior::Garbage(
        b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n\xff\xfe"
            .to_vec()
            .into(),
    ));
    let endless = MockUpstream::start(Behavior::Endless {
        content_type: "application/json",
        piece: " ".into(),
        every: Duration::from_millis(100),
    });
    let endless_stream = MockUpstream::start(Behavior::Endless {
        content_type: "text/event-stream",
        piece: sse_chat_chunk("gpt-4o", "again ").into(),
        every: Duration::from_millis(100),
    });
    let enormous = MockUpstream::start(Behavior::Enormous {
        content_type: "application/json",
        prefix: "{\"pad\": \"".into(),
        fill: b'x',
        total: 256 * 1024 * 1024,
    });
    let enormous_event = MockUpstream::start(Behavior::Enormous {
        content_type: "text/event-stream",
        prefix: "data: {\"pad\": \"".into(),
        fill: b'x',
        total: 256 * 1024 * 1024,
    });
    let stalled = MockUpstream::start(Behavior::SseAbort {
        chunks: vec![
            sse_chat_chunk("gpt-4o", "first "),
            sse_chat_chunk("gpt-4o", "then nothing"),
        ],
        delay_between: Duration::from_secs(30),
    });
    // https URLs whose servers do not speak TLS: one answers the ClientHello as a plain
    // HTTP server does (the handshake fails), one waits for the rest of a request that
    // never comes (the handshake stalls).
    let tls_url = format!(
        "https://127.0.0.1:{}/v1",
        answers_on_accept(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    );
    let silent = MockUpstream::start(Behavior::EchoChat);
    let tls_stall_url = format!("https://127.0.0.1:{}/v1", silent.port());
    let f = start(vec![
        ("garbage", garbage.url(), Some(garbage)),
        ("endless", endless.url(), Some(endless)),
        ("endless-stream", endless_stream.url(), Some(endless_stream)),
        ("enormous", enormous.url(), Some(enormous)),
        ("enormous-event", enormous_event.url(), Some(enormous_event)),
        ("stalled", stalled.url(), Some(stalled)),
        ("tls-fail", tls_url, None),
        ("tls-stall", tls_stall_url, Some(silent)),
    ]);
    let idle_rss = f.peak_rss_mib();

    // (model, status, code, longest it may take)
    let json_cases = [
        (
            "garbage",
            502,
            "upstream_protocol_error",
            Duration::from_secs(1),
        ),
        (
            "endless",
            504,
            "upstream_timeout",
            TOTAL + Duration::from_secs(1),
        ),
        (
            "enormous",
            502,
            "upstream_protocol_error",
            Duration::from_secs(5),
        ),
        (
            "tls-fail",
            502,
            "upstream_unreachable",
            Duration::from_secs(2),
        ),
        (
            "tls-stall",
            504,
            "upstream_timeout",
            TOTAL + Duration::from_secs(1),
        ),
    ];
    for (model, status, code, within) in json_cases {
        let start = Instant::now();
        let (got_status, got_code) = error_of(f.chat(model, false).await).await;
        let took = start.elapsed();
        assert_eq!((got_status, got_code.as_str()), (status, code), "{model}");
        assert!(took < within, "{model} took {took:?}");
    }

    // Streams: the events that came, then one error event, and the stream ends.
    let stream_cases = [
        (
            "endless-stream",
            "upstream_timeout",
            TOTAL + Duration::from_secs(1),
        ),
        ("stalled", "upstream_timeout", IDLE + Duration::from_secs(2)),
        (
            "enormous-event",
            "upstream_protocol_error",
            Duration::from_secs(10),
        ),
    ];
    for (model, code, within) in stream_cases {
        let start = Instant::now();
        let events = stream_events(f.chat(model, true).await).await;
        let took = start.elapsed();
        assert!(took < within, "{model} took {took:?}");
        assert_ne!(events.last().map(String::as_str), Some("[DONE]"), "{model}");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], code, "{model}: {last}");
    }

    // 512 MiB of enormous answers went by; the gateway kept none of it.
    let peak = f.peak_rss_mib();
    eprintln!("gateway RSS: {idle_rss} MiB at start, peak {peak} MiB after the faults");
    assert!(
        peak < idle_rss + 64,
        "peak RSS {peak} MiB (idle {idle_rss} MiB)"
    );

    // Every fault counted: as an upstream failure by its code, and as a failed request
    // (or a stream cut) of its pool.
    // (A request is counted once it has been logged, just after its client got the end.)
    let mut m = f.metrics().await;
    for _ in 0..50 {
        if counter(&m, "tollgate_upstream_failures_total", &[]) >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = f.metrics().await;
    }
    for (code, n) in [
        ("upstream_protocol_error", 3.0),
        ("upstream_timeout", 4.0),
        ("upstream_unreachable", 1.0),
    ] {
        let got = counter(
            &m,
            "tollgate_upstream_failures_total",
            &[&format!("code=\"{code}\"")],
        );
        assert!(got >= n, "{code}: {got}, want at least {n}\n{m}");
    }
    for pool in ["garbage", "endless", "enormous", "tls-fail", "tls-stall"] {
        let n = counter(
            &m,
            "tollgate_requests_total",
            &[&format!("pool=\"{pool}\""), "status=\"5xx\""],
        );
        assert_eq!(n, 1.0, "{pool}\n{m}");
    }

    // Three faults in a row open an endpoint's breaker; then the pool fails fast.
    for _ in 0..2 {
        let _ = error_of(f.chat("garbage", false).await).await;
    }
    let breaker = f.breaker("garbage").await;
    assert!(breaker.contains("open"), "breaker: {breaker}");
    let start = Instant::now();
    let (status, code) = error_of(f.chat("garbage", false).await).await;
    assert_eq!((status, code.as_str()), (503, "no_healthy_upstream"));
    assert!(start.elapsed() < Duration::from_millis(500));
    let healthy = f.chat("tls-fail", false).await;
    assert_eq!(
        healthy.status(),
        502,
        "other pools are untouched by garbage's breaker"
    );
}
