//! Balancing strategies over real sockets: how a pool shares requests among its endpoints
//! (round robin by weight, least in flight, ewma, consistent hash, load aware), and how
//! active health checks take an endpoint out of the rotation and bring it back.
//!
//! Which endpoint served a request is read from the `x-tollgate-endpoint` response header
//! and checked against the mocks' own request counts.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A gateway config: one listener, then `rest` (models, pools, routing), as YAML.
fn config(rest: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n{rest}"
    )
}

/// One model `m` served by pool `p` with these endpoints (from [`endpoint`]) and pool
/// settings (`pool_extra`: YAML lines indented by four spaces).
fn one_pool(endpoints: &[String], pool_extra: &str) -> String {
    config(&format!(
        "models:\n  m:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n{}{pool_extra}",
        endpoints.concat()
    ))
}

/// An endpoint list entry for `upstream`, with a readable name.
fn endpoint(name: &str, upstream: &MockUpstream) -> String {
    format!("      - {{url: '{}', name: {name}}}\n", upstream.url())
}

fn chat_body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

/// Posts a chat request; returns the status and the endpoint that served it.
async fn chat(client: &reqwest::Client, gw: &Gateway, body: &Value) -> (u16, String) {
    chat_with(client.post(gw.url("/v1/chat/completions")).json(body)).await
}

async fn chat_with(request: reqwest::RequestBuilder) -> (u16, String) {
    let resp = request.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let endpoint = resp
        .headers()
        .get("x-tollgate-endpoint")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    // Read the body so the connection is free for the next request.
    let _ = resp.bytes().await;
    (status, endpoint)
}

/// Requests to the chat API an upstream received (metrics scrapes left out).
fn chat_requests(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

fn tally(served: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for name in served {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_shares_by_weight() {
    let light = MockUpstream::start(Behavior::EchoChat);
    let heavy = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&one_pool(
        &[
            format!(
                "      - {{url: '{}', name: light, weight: 1}}\n",
                light.url()
            ),
            format!(
                "      - {{url: '{}', name: heavy, weight: 3}}\n",
                heavy.url()
            ),
        ],
        "    balance: {strategy: round_robin}\n    health_check: {enabled: false}\n",
    ));
    let client = reqwest::Client::new();
    let mut served = Vec::new();
    for _ in 0..1000 {
        let (status, endpoint) = chat(&client, &gw, &chat_body()).await;
        assert_eq!(status, 200);
        served.push(endpoint);
    }
    let counts = tally(&served);
    assert_eq!(counts.values().sum::<usize>(), 1000, "{counts:?}");
    let (l, h) = (counts["light"], counts["heavy"]);
    assert!((200..=300).contains(&l), "light: 25 % ± 5 %: {counts:?}");
    assert!((700..=800).contains(&h), "heavy: 75 % ± 5 %: {counts:?}");
    assert_eq!((chat_requests(&light), chat_requests(&heavy)), (l, h));
}

#[tokio::test]
async fn least_in_flight_sends_to_the_idle_endpoint() {
    let busy = MockUpstream::start(Behavior::delay(Duration::from_secs(2), Behavior::EchoChat));
    let idle = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&one_pool(
        &[endpoint("busy", &busy), endpoint("idle", &idle)],
        "    balance: {strategy: least_in_flight}\n    health_check: {enabled: false}\n",
    ));
    let client = reqwest::Client::new();
    let mut pending = Vec::new();
    for _ in 0..10 {
        let request = client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body());
        pending.push(tokio::spawn(chat_with(request)));
        // Long enough for an answer from `idle` to come back on a loaded machine, far
        // shorter than `busy` holds a request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut served = Vec::new();
    for p in pending {
        let (status, endpoint) = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("every request is answered")
            .unwrap();
        assert_eq!(status, 200);
        served.push(endpoint);
    }
    let counts = tally(&served);
    let to_busy = counts.get("busy").copied().unwrap_or(0);
    assert!(
        to_busy <= 1,
        "the busy endpoint holds one request at most: {counts:?}"
    );
    assert_eq!(chat_requests(&busy), to_busy);
    assert_eq!(chat_requests(&idle), 10 - to_busy);
}

#[tokio::test]
async fn consistent_hash_keeps_sessions_and_moves_only_the_dead_endpoints() {
    let a = MockUpstream::start(Behavior::EchoChat);
    let b = MockUpstream::start(Behavior::EchoChat);
    let c = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&one_pool(
        &[endpoint("a", &a), endpoint("b", &b), endpoint("c", &c)],
        "    balance: {strategy: consistent_hash}\n    retry: {backoff: 1ms}\n    health_check: {enabled: false}\n",
    ));
    let client = reqwest::Client::new();
    let sessions: Vec<String> = (0..30).map(|i| format!("session-{i}")).collect();

    // Each session's endpoint, by the `x-session-id` header.
    let by_header = |session: &str| {
        client
            .post(gw.url("/v1/chat/completions"))
            .header("x-session-id", session)
            .json(&chat_body())
    };
    let mut home: HashMap<&str, String> = HashMap::new();
    for session in &sessions {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (status, endpoint) = chat_with(by_header(session)).await;
            assert_eq!(status, 200);
            seen.push(endpoint);
        }
        assert!(
            seen.iter().all(|e| *e == seen[0]),
            "{session} stays on one endpoint: {seen:?}"
        );
        home.insert(session, seen[0].clone());
    }
    let homes: Vec<String> = home.values().cloned().collect();
    let spread = tally(&homes);
    assert_eq!(
        spread.len(),
        3,
        "sessions spread over every endpoint: {spread:?}"
    );

    // Without the header, the body's `user` is the key.
    for session in &sessions[..10] {
        let body =
            json!({"model": "m", "user": session, "messages": [{"role": "user", "content": "hi"}]});
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (status, endpoint) = chat(&client, &gw, &body).await;
            assert_eq!(status, 200);
            seen.push(endpoint);
        }
        assert!(
            seen.iter().all(|e| *e == seen[0]),
            "user {session} stays on one endpoint: {seen:?}"
        );
    }

    // `c` dies: connections to it are refused from now on.
    drop(c);
    let mut moved: HashMap<&str, String> = HashMap::new();
    for session in &sessions {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (status, endpoint) = chat_with(by_header(session)).await;
            assert_eq!(status, 200, "{session} is still served");
            seen.push(endpoint);
        }
        let was = home[session.as_str()].as_str();
        if was == "c" {
            assert!(
                seen[0] != "c" && seen.iter().all(|e| *e == seen[0]),
                "{session} left the dead endpoint for one other: {seen:?}"
            );
            moved.insert(session, seen[0].clone());
        } else {
            assert!(
                seen.iter().all(|e| e == was),
                "{session} stays on {was} while it lives: {seen:?}"
            );
        }
    }
    assert!(!moved.is_empty(), "some sessions lived on `c`: {home:?}");
}

/// A vLLM-like upstream: `GET /metrics` reports `waiting` and `running` requests, every
/// other path is chat.
fn vllm(waiting: u32, running: u32) -> Behavior {
    let body = format!(
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"m\"}} {running}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} 0.5\n"
    );
    Behavior::custom(move |r| {
        if r.path == "/metrics" {
            Behavior::Raw {
                status: 200,
                headers: vec![("content-type".into(), "text/plain; version=0.0.4".into())],
                body: body.clone().into(),
            }
        } else {
            Behavior::EchoChat
        }
    })
}

fn scrapes(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path == "/metrics")
        .count()
}

/// Waits until both upstreams were scraped `more` times after `since` ([`scrapes`]
/// counts). A scrape round ends before the next begins, so two scrapes seen mean the
/// first one's figures are in.
async fn wait_for_scrapes(ups: [&MockUpstream; 2], since: [usize; 2], more: usize) {
    let done = eventually(Duration::from_secs(5), || {
        scrapes(ups[0]) >= since[0] + more && scrapes(ups[1]) >= since[1] + more
    })
    .await;
    assert!(done, "scraped: {} and {}", scrapes(ups[0]), scrapes(ups[1]));
}

#[tokio::test]
async fn load_aware_avoids_a_long_queue_and_keeps_prefixes_together() {
    let queued = MockUpstream::start(vllm(50, 4));
    let free = MockUpstream::start(vllm(0, 4));
    let gw = Gateway::start(&one_pool(
        &[endpoint("queued", &queued), endpoint("free", &free)],
        "    balance: {strategy: load_aware, scrape_interval: 50ms, max_waiting: 16}\n\
         \x20   health_check: {enabled: false}\n",
    ));
    wait_for_scrapes([&queued, &free], [0, 0], 2).await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let (status, endpoint) = chat(&client, &gw, &chat_body()).await;
        assert_eq!(status, 200);
        assert_eq!(endpoint, "free", "the queued endpoint is saturated");
    }
    assert_eq!(chat_requests(&queued), 0);
    assert_eq!(chat_requests(&free), 20);

    // Equal light load: where a prompt prefix goes is up to affinity.
    queued.set_behavior(vllm(0, 1));
    free.set_behavior(vllm(0, 1));
    wait_for_scrapes([&queued, &free], [scrapes(&queued), scrapes(&free)], 2).await;
    let system = "You are a careful assistant. ".repeat(60);
    assert!(system.len() > 1024);
    let with_prefix = |system: &str, question: String| {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]})
    };
    let mut shared = Vec::new();
    for i in 0..10 {
        let body = with_prefix(&system, format!("question {i}"));
        let (status, endpoint) = chat(&client, &gw, &body).await;
        assert_eq!(status, 200);
        shared.push(endpoint);
    }
    assert!(
        shared.iter().all(|e| *e == shared[0]),
        "one prefix, one endpoint: {shared:?}"
    );
    let mut distinct = Vec::new();
    for i in 0..20 {
        let body = with_prefix(&format!("{i}: {system}"), "question".to_owned());
        let (status, endpoint) = chat(&client, &gw, &body).await;
        assert_eq!(status, 200);
        distinct.push(endpoint);
    }
    let counts = tally(&distinct);
    assert_eq!(
        counts.len(),
        2,
        "different prefixes spread over both: {counts:?}"
    );
}

#[tokio::test]
async fn health_checks_take_an_endpoint_out_and_bring_it_back() {
    let alpha = MockUpstream::start(Behavior::EchoChat);
    let beta = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&one_pool(
        &[endpoint("alpha", &alpha), endpoint("beta", &beta)],
        "    health_check: {interval: 100ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1}\n",
    ));
    let client = reqwest::Client::new();

    alpha.set_probe_status(500);
    // A probe answered while the status changed may have got 200, and the gateway reads
    // a probe's answer after the mock counts it: the third probe from now got 500 and
    // the round before it was recorded.
    let probed = alpha.probe_count();
    assert!(
        alpha
            .wait_for_probes(probed + 3, Duration::from_secs(5))
            .await,
        "probes: {}",
        alpha.probe_count()
    );
    let before = chat_requests(&alpha);
    for _ in 0..10 {
        let (status, endpoint) = chat(&client, &gw, &chat_body()).await;
        assert_eq!(status, 200);
        assert_eq!(endpoint, "beta", "alpha is down");
    }
    assert_eq!(chat_requests(&alpha), before);
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("Endpoint down") && l.contains("endpoint=alpha")),
        "{logs}"
    );

    alpha.set_probe_status(200);
    let probed = alpha.probe_count();
    assert!(
        alpha
            .wait_for_probes(probed + 3, Duration::from_secs(5))
            .await,
        "probes: {}",
        alpha.probe_count()
    );
    let mut served = Vec::new();
    for _ in 0..10 {
        let (status, endpoint) = chat(&client, &gw, &chat_body()).await;
        assert_eq!(status, 200);
        served.push(endpoint);
    }
    let counts = tally(&served);
    assert!(
        counts.get("alpha").is_some_and(|&n| n >= 3),
        "alpha is back in the rotation: {counts:?}"
    );
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("Endpoint up") && l.contains("endpoint=alpha")),
        "{logs}"
    );
}

#[tokio::test]
async fn ewma_prefers_the_faster_endpoint() {
    let slow = MockUpstream::start(Behavior::delay(
        Duration::from_millis(50),
        Behavior::EchoChat,
    ));
    let fast = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&one_pool(
        &[endpoint("slow", &slow), endpoint("fast", &fast)],
        "    balance: {strategy: ewma}\n    health_check: {enabled: false}\n",
    ));
    let client = reqwest::Client::new();
    let mut served = Vec::new();
    for _ in 0..40 {
        let (status, endpoint) = chat(&client, &gw, &chat_body()).await;
        assert_eq!(status, 200);
        served.push(endpoint);
    }
    let counts = tally(&served);
    let to_fast = counts.get("fast").copied().unwrap_or(0);
    assert!(to_fast >= 30, "the fast endpoint takes ≥ 75 %: {counts:?}");
    assert_eq!(chat_requests(&fast), to_fast);
}
