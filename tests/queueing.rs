//! Admission control over real sockets: a pool whose endpoint takes a fixed number of
//! requests at a time, a slow mock upstream, and callers of several priority classes.
//!
//! Which request reached the upstream when is read from the mock's own record (each
//! request carries a tag as its message); how many wait is read from the gateway's
//! `tollgate_queue_length` metric on its admin listener. Every wait is bounded.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Every request and every wait in this file is bounded by at most this.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The API key of key id `id`.
fn secret(id: &str) -> String {
    format!("sk-test-{id}-0123456789abcdef")
}

/// Keys: `alice` (tier pro: interactive), `bob` (tier free: batch), `carol`, `heavy` and
/// `light` (no tier: standard). `classes` are the `priorities.classes` entries (YAML lines
/// indented by 4); `queue` the pool's queue settings (a flow mapping's inside).
fn config(upstream: &MockUpstream, admin_port: u16, queue: &str, classes: &str) -> String {
    let mut keys = String::new();
    for (id, tier) in [
        ("alice", "pro"),
        ("bob", "free"),
        ("carol", ""),
        ("heavy", ""),
        ("light", ""),
    ] {
        let tier = if tier.is_empty() {
            String::new()
        } else {
            format!(", tier: {tier}")
        };
        keys.push_str(&format!(
            "    - {{id: {id}, secret: '{}'{tier}}}\n",
            secret(id)
        ));
    }
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         admin:\n  address: 127.0.0.1:{admin_port}\n\
         auth:\n  keys:\n{keys}\
         priorities:\n  classes:\n{classes}  default: standard\n  tiers: {{pro: interactive, free: batch}}\n\
         models:\n  m:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}', name: slow}}]\n\
         \x20   health_check: {{enabled: false}}\n    breaker: {{enabled: false}}\n\
         \x20   queue: {{{queue}}}\n",
        upstream.url()
    )
}

/// [`config`] plus a model `spare` on its own pool (`spare_upstream`, no queue), which
/// `m` falls back to.
fn config_with_fallback(
    upstream: &MockUpstream,
    spare_upstream: &MockUpstream,
    admin_port: u16,
    queue: &str,
) -> String {
    config(upstream, admin_port, queue, CLASSES).replace(
        "    targets: [{pool: p}]\n",
        "    targets: [{pool: p}]\n    fallbacks: [spare]\n  spare:\n    targets: [{pool: s}]\n",
    ) + &format!(
        "  s:\n    provider: openai\n    endpoints: [{{url: '{}', name: spare}}]\n    health_check: {{enabled: false}}\n",
        spare_upstream.url()
    )
}

const CLASSES: &str = "    interactive: {level: 10}\n    standard: {level: 5}\n    batch: {level: 1, sheddable: true}\n";

/// A chat request whose message is `tag`, so the upstream's record says which it was.
fn body(tag: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": tag}]})
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().unwrap()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// Status, `retry-after` and the body (JSON) of a chat request by `key` to `url`.
async fn post(client: reqwest::Client, url: String, key: String, tag: String) -> Answer {
    let resp = client
        .post(url)
        .bearer_auth(secret(&key))
        .json(&body(&tag))
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
    Answer {
        status,
        retry_after,
        body,
    }
}

/// A chat request by `key`, answered.
async fn chat(client: &reqwest::Client, gw: &Gateway, key: &str, tag: &str) -> Answer {
    let url = gw.url("/v1/chat/completions");
    post(client.clone(), url, key.to_owned(), tag.to_owned()).await
}

/// A chat request by `key`, sent in the background.
fn spawn_chat(client: &reqwest::Client, gw: &Gateway, key: &str, tag: &str) -> JoinHandle<Answer> {
    let url = gw.url("/v1/chat/completions");
    tokio::spawn(post(client.clone(), url, key.to_owned(), tag.to_owned()))
}

async fn finish(task: JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("answered in time")
        .unwrap()
}

/// The tags of the chat requests the upstream received, in arrival order.
fn arrivals(upstream: &MockUpstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| {
            r.json()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The value of the series `name` whose labels include `labels`; 0 when absent.
async fn metric(
    client: &reqwest::Client,
    admin_port: u16,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let text = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("the admin listener answers")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            let series = line.rsplit_once(' ').map_or(*line, |(s, _)| s);
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Pool `p`'s series `name` for `priority` and one more label.
async fn pool_series(
    client: &reqwest::Client,
    admin_port: u16,
    name: &str,
    priority: &str,
    label: (&str, &str),
) -> f64 {
    let labels = [("pool", "p"), ("priority", priority), label];
    metric(client, admin_port, name, &labels).await
}

/// Requests of `priority` waiting in pool `p`'s queue.
async fn queued(client: &reqwest::Client, admin_port: u16, priority: &str) -> usize {
    metric(
        client,
        admin_port,
        "tollgate_queue_length",
        &[("pool", "p"), ("priority", priority)],
    )
    .await as usize
}

/// Polls until `priority` has `n` requests waiting; panics after [`TIMEOUT`].
async fn wait_queued(client: &reqwest::Client, admin_port: u16, priority: &str, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = queued(client, admin_port, priority).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{priority}: {now} waiting, never {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upstream whose first `held` requests take `hold`, and every later one `quick`.
fn slow_upstream(held: usize, hold: Duration, quick: Duration) -> MockUpstream {
    let mut steps = vec![Behavior::delay(hold, Behavior::EchoChat); held];
    steps.push(Behavior::delay(quick, Behavior::EchoChat));
    MockUpstream::start(Behavior::Sequence(steps))
}

fn assert_saturated(a: &Answer, status: u16, says: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let e = &a.body["error"];
    assert_eq!(e["code"], "pool_saturated", "{a:?}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("Pool `p` is saturated"), "{message}");
    assert!(message.contains(says), "`{message}` should say `{says}`");
    assert_eq!(a.retry_after.as_deref(), Some("1"), "{a:?}");
}

#[tokio::test]
async fn high_priority_requests_are_served_before_queued_low_priority_ones() {
    // Two slots; the two requests that take them hold them while the rest queue.
    let upstream = slow_upstream(2, Duration::from_secs(2), Duration::from_millis(50));
    let admin_port = free_port();
    let gw = Gateway::start(&config(
        &upstream,
        admin_port,
        "max_in_flight_per_endpoint: 2, max_length: 50",
        CLASSES,
    ));
    let client = client();

    let mut low = Vec::new();
    for i in 0..12 {
        low.push(spawn_chat(&client, &gw, "bob", &format!("low-{i}")));
    }
    assert!(upstream.wait_for_requests(2, TIMEOUT).await);
    wait_queued(&client, admin_port, "batch", 10).await;
    let high: Vec<_> = (0..2)
        .map(|i| spawn_chat(&client, &gw, "alice", &format!("high-{i}")))
        .collect();
    wait_queued(&client, admin_port, "interactive", 2).await;
    assert_eq!(
        upstream.request_count(),
        2,
        "the test needs both slots still held while the high-priority requests queue"
    );

    for task in high.into_iter().chain(low) {
        assert_eq!(finish(task).await.status, 200);
    }
    let order = arrivals(&upstream);
    assert_eq!(order.len(), 14, "{order:?}");
    assert!(
        order[..2].iter().all(|t| t.starts_with("low-")),
        "{order:?}"
    );
    assert!(
        order[2..4].iter().all(|t| t.starts_with("high-")),
        "the high-priority requests take the next two slots: {order:?}"
    );
    assert!(
        order[4..].iter().all(|t| t.starts_with("low-")),
        "{order:?}"
    );

    let served = |priority| {
        pool_series(
            &client,
            admin_port,
            "tollgate_queue_wait_seconds_count",
            priority,
            ("outcome", "served"),
        )
    };
    assert_eq!(served("interactive").await, 2.0);
    assert_eq!(served("batch").await, 12.0);
    assert_eq!(queued(&client, admin_port, "batch").await, 0);
}

#[tokio::test]
async fn a_light_key_is_not_stuck_behind_a_heavy_one() {
    // One slot: requests reach the upstream strictly in the order the queue grants them.
    let upstream = slow_upstream(1, Duration::from_millis(1500), Duration::from_millis(20));
    let admin_port = free_port();
    let gw = Gateway::start(&config(
        &upstream,
        admin_port,
        "max_in_flight_per_endpoint: 1, max_length: 100",
        CLASSES,
    ));
    let client = client();

    let mut tasks = Vec::new();
    for i in 0..50 {
        tasks.push(spawn_chat(&client, &gw, "heavy", &format!("heavy-{i}")));
    }
    assert!(upstream.wait_for_requests(1, TIMEOUT).await);
    wait_queued(&client, admin_port, "standard", 49).await;
    for i in 0..5 {
        tasks.push(spawn_chat(&client, &gw, "light", &format!("light-{i}")));
    }
    wait_queued(&client, admin_port, "standard", 54).await;
    assert_eq!(upstream.request_count(), 1, "the slot is still held");

    for task in tasks {
        assert_eq!(finish(task).await.status, 200);
    }
    let order = arrivals(&upstream);
    assert_eq!(order.len(), 55, "{order:?}");
    // The bound: callers of one level take turns, so the light key's k-th request
    // (k = 0..4) reaches the upstream after at most k + 1 of the heavy requests that were
    // waiting with it. First come, first served would put all five after 49.
    let after_first = &order[1..];
    let mut heavy_before = 0;
    let mut light_seen = 0;
    for tag in after_first {
        if tag.starts_with("light-") {
            assert!(
                heavy_before <= light_seen + 1,
                "light request {light_seen} came after {heavy_before} heavy ones: {order:?}"
            );
            light_seen += 1;
        } else {
            heavy_before += 1;
        }
        if light_seen == 5 {
            break;
        }
    }
    assert_eq!(light_seen, 5, "{order:?}");
    assert!(
        heavy_before <= 6,
        "all five light requests within the first 11 granted: {order:?}"
    );
}

#[tokio::test]
async fn queue_limits_and_max_wait_give_the_right_errors() {
    let upstream =
        MockUpstream::start(Behavior::delay(Duration::from_secs(10), Behavior::EchoChat));
    let admin_port = free_port();
    let classes = "    interactive: {level: 10, max_wait: 400ms}\n    standard: {level: 5}\n    batch: {level: 1, sheddable: true}\n";
    let gw = Gateway::start(&config(
        &upstream,
        admin_port,
        "max_in_flight_per_endpoint: 1, max_length: 2, max_wait: 20s",
        classes,
    ));
    let client = client();

    // One batch request takes the slot, two more wait: the queue is full.
    let mut background = vec![spawn_chat(&client, &gw, "bob", "batch-0")];
    assert!(upstream.wait_for_requests(1, TIMEOUT).await);
    background.push(spawn_chat(&client, &gw, "bob", "batch-1"));
    wait_queued(&client, admin_port, "batch", 1).await;
    let newest_batch = spawn_chat(&client, &gw, "bob", "batch-2");
    wait_queued(&client, admin_port, "batch", 2).await;

    // A sheddable request that finds the queue full: 429.
    let refused = chat(&client, &gw, "bob", "batch-3").await;
    assert_saturated(&refused, 429, "its queue is full");
    assert_eq!(refused.body["error"]["type"], "requests");

    // A higher class takes the newest batch request's place, which gets 429 …
    let started = Instant::now();
    let interactive = spawn_chat(&client, &gw, "alice", "interactive-0");
    let shed = finish(newest_batch).await;
    assert_saturated(&shed, 429, "went to one of higher priority");
    // … and then waits its class's 400 ms, in vain: 503.
    let timed_out = finish(interactive).await;
    let waited = started.elapsed();
    assert_saturated(&timed_out, 503, "waited as long as it may");
    assert_eq!(timed_out.body["error"]["type"], "server_error");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    wait_queued(&client, admin_port, "interactive", 0).await;

    // A non-sheddable request that finds the queue full of its own level: 503 at once.
    background.push(spawn_chat(&client, &gw, "carol", "standard-0"));
    wait_queued(&client, admin_port, "standard", 1).await;
    // (This one sheds the last batch request.)
    background.push(spawn_chat(&client, &gw, "carol", "standard-1"));
    wait_queued(&client, admin_port, "standard", 2).await;
    wait_queued(&client, admin_port, "batch", 0).await;
    let started = Instant::now();
    let full = chat(&client, &gw, "carol", "standard-2").await;
    assert_saturated(&full, 503, "its queue is full");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );

    assert_eq!(
        arrivals(&upstream),
        ["batch-0"],
        "nothing refused went upstream"
    );
    let refusals = |priority, reason| {
        pool_series(
            &client,
            admin_port,
            "tollgate_queue_rejections_total",
            priority,
            ("reason", reason),
        )
    };
    assert_eq!(refusals("batch", "queue_full").await, 1.0);
    assert_eq!(refusals("batch", "queue_shed").await, 2.0);
    assert_eq!(refusals("interactive", "queue_timeout").await, 1.0);
    assert_eq!(refusals("standard", "queue_full").await, 1.0);
    for task in background {
        task.abort();
    }
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let upstream = slow_upstream(1, Duration::from_secs(2), Duration::from_millis(20));
    let admin_port = free_port();
    let gw = Gateway::start(&config(
        &upstream,
        admin_port,
        "max_in_flight_per_endpoint: 1, max_length: 1",
        CLASSES,
    ));
    let client = client();

    let first = spawn_chat(&client, &gw, "carol", "first");
    assert!(upstream.wait_for_requests(1, TIMEOUT).await);

    // A client that queues, then hangs up.
    let payload = body("gone").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
        secret("carol"),
        payload.len()
    );
    let mut leaving = TcpStream::connect(gw.addr()).unwrap();
    leaving.write_all(request.as_bytes()).unwrap();
    wait_queued(&client, admin_port, "standard", 1).await;
    let full = chat(&client, &gw, "carol", "refused").await;
    assert_saturated(&full, 503, "its queue is full");

    drop(leaving);
    // Its place is free at once, long before the slot is.
    wait_queued(&client, admin_port, "standard", 0).await;
    assert_eq!(upstream.request_count(), 1, "the slot is still held");
    let next = spawn_chat(&client, &gw, "carol", "next");
    wait_queued(&client, admin_port, "standard", 1).await;

    assert_eq!(finish(first).await.status, 200);
    assert_eq!(finish(next).await.status, 200);
    assert_eq!(arrivals(&upstream), ["first", "next"]);
    let abandoned = pool_series(
        &client,
        admin_port,
        "tollgate_queue_wait_seconds_count",
        "standard",
        ("outcome", "abandoned"),
    )
    .await;
    assert_eq!(abandoned, 1.0);
}

#[tokio::test]
async fn a_saturated_pool_passes_the_request_to_the_models_fallback() {
    let upstream =
        MockUpstream::start(Behavior::delay(Duration::from_secs(10), Behavior::EchoChat));
    let spare = MockUpstream::start(Behavior::EchoChat);
    let admin_port = free_port();
    let gw = Gateway::start(&config_with_fallback(
        &upstream,
        &spare,
        admin_port,
        "max_in_flight_per_endpoint: 1, max_length: 1",
    ));
    let client = client();

    let held = spawn_chat(&client, &gw, "carol", "held");
    assert!(upstream.wait_for_requests(1, TIMEOUT).await);
    let waiting = spawn_chat(&client, &gw, "carol", "waiting");
    wait_queued(&client, admin_port, "standard", 1).await;
    // The queue is full: the fallback answers instead of a 503.
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret("carol"))
        .json(&body("spilled"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tollgate-model"], "spare");
    assert_eq!(arrivals(&spare), ["spilled"]);
    assert_eq!(arrivals(&upstream), ["held"]);
    held.abort();
    waiting.abort();
}
