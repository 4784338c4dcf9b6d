//! Hot reload over real sockets: the config file is rewritten under a running gateway
//! process, and the reload follows a SIGHUP or the file change alone. Requests in flight
//! finish on the config they started with, none fails, and what the config did not
//! change (here: the limit counters) carries over.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::openai::*;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Every request, and every wait for a reload to show, is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A config: one listener, `models` (YAML lines under `models:`), pool `p` on `upstream`,
/// then `rest` (more top-level sections).
fn config(upstream: &MockUpstream, models: &str, rest: &str) -> String {
    format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n{models}\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         {rest}",
        upstream.url()
    )
}

/// `name`, served by pool `p`, as a line under `models:`.
fn model(name: &str) -> String {
    format!("  {name}:\n    targets: [{{pool: p}}]\n")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().unwrap()
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The status of a non-stream chat request for `model`, with `key` if given.
async fn status(client: &reqwest::Client, gw: &Gateway, model: &str, key: Option<&str>) -> u16 {
    let mut req = client
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(model, false));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Writes the config file the gateway runs on (placeholders filled as at its start).
fn rewrite(gw: &Gateway, yaml: &str) {
    // Written beside it, then renamed over it: the watcher never sees half a file.
    let tmp = gw.dir().join("config.yaml.tmp");
    std::fs::write(&tmp, fill_placeholders(yaml, gw.port(), gw.dir())).unwrap();
    std::fs::rename(&tmp, gw.config_path()).unwrap();
}

/// Polls until a request for `model` answers `want`; false after [`TIMEOUT`].
async fn wait_for_status(gw: &Gateway, model: &str, key: Option<&str>, want: u16) -> bool {
    let client = client();
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if status(&client, gw, model, key).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Lines of the gateway's log that contain every one of `parts`.
fn log_lines(gw: &Gateway, parts: &[&str]) -> usize {
    gw.logs()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// What the load clients saw.
#[derive(Default)]
struct LoadReport {
    ok: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

/// Sends requests for `model` in a loop, every third one streamed, until `stop`, a
/// deadline or a count; records anything but a whole 200 answer.
async fn load_client(
    url: String,
    model: &'static str,
    stop: Arc<AtomicBool>,
    report: Arc<LoadReport>,
) {
    const MAX_REQUESTS: usize = 1500;
    const MAX_TIME: Duration = Duration::from_secs(12);
    let client = client();
    let deadline = Instant::now() + MAX_TIME;
    for i in 0..MAX_REQUESTS {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        let stream = i % 3 == 0;
        let outcome = match client.post(&url).json(&chat(model, stream)).send().await {
            Err(e) => Err(format!("request {i}: {e}")),
            Ok(resp) => {
                let code = resp.status();
                match resp.text().await {
                    Err(e) => Err(format!("request {i}: body: {e}")),
                    Ok(_) if code != 200 => Err(format!("request {i}: status {code}")),
                    Ok(body) if stream && !body.contains("data: [DONE]") => {
                        Err(format!("request {i}: stream without [DONE]: {body}"))
                    }
                    Ok(_) => Ok(()),
                }
            }
        };
        match outcome {
            Ok(()) => report.ok.fetch_add(1, Ordering::SeqCst),
            Err(e) => {
                report.failures.lock().unwrap().push(e);
                0
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_lose_no_request_and_a_bad_file_changes_nothing() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    // `steady` is in every version; `v<k>` only in version k.
    let version = |k: usize| config(&upstream, &(model("steady") + &model(&format!("v{k}"))), "");
    let mut gw = Gateway::start(&version(0));
    assert_eq!(status(&client(), &gw, "v0", None).await, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(LoadReport::default());
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load_client(
                gw.url("/v1/chat/completions"),
                "steady",
                stop.clone(),
                report.clone(),
            ))
        })
        .collect();

    let mut live = 0;
    for k in 1..=5 {
        let by_signal = k % 2 == 1;
        if k == 3 {
            // Unknown pool: rejected, with its line, and the running config stays.
            let bad = version(3).replace("targets: [{pool: p}]\n", "targets: [{pool: nowhere}]\n");
            rewrite(&gw, &bad);
            gw.signal("HUP");
            assert!(
                eventually(TIMEOUT, || log_lines(&gw, &["Config reload failed"]) >= 1).await,
                "no failed reload logged"
            );
            let reason = log_lines(
                &gw,
                &["Config reload: invalid config", "config.yaml:", "nowhere"],
            );
            assert!(
                reason >= 1,
                "the reason, with its line, is logged:\n{}",
                gw.logs()
            );
            assert_eq!(status(&client(), &gw, &format!("v{live}"), None).await, 200);
            assert_eq!(status(&client(), &gw, "v3", None).await, 404);
            continue;
        }
        rewrite(&gw, &version(k));
        if by_signal {
            gw.signal("HUP");
        }
        assert!(
            wait_for_status(&gw, &format!("v{k}"), None, 200).await,
            "version {k} was not applied (by {})",
            if by_signal { "SIGHUP" } else { "file change" }
        );
        assert_eq!(status(&client(), &gw, &format!("v{live}"), None).await, 404);
        live = k;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let failures = report.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert!(report.ok.load(Ordering::SeqCst) >= 20, "the load ran");
    // Versions 1 and 5 by SIGHUP (maybe also seen by the watcher first), 2 and 4 by the
    // file change alone. Each line is written just after its swap.
    let logged = eventually(TIMEOUT, || {
        log_lines(&gw, &["Config reloaded", "sighup"]) >= 2
            && log_lines(&gw, &["Config reloaded", "file_changed"]) >= 2
    })
    .await;
    assert!(logged, "{}", gw.logs());
    assert!(gw.wait_for_exit(Duration::ZERO).is_none(), "still running");
}

/// Seconds left in the current UTC minute (rpm windows are calendar minutes).
fn seconds_left_in_minute() -> u64 {
    60 - SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60
}

#[tokio::test]
async fn limit_counters_survive_a_reload() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let (alice, bob) = (
        "sk-test-alice-0123456789abcdef",
        "sk-test-bob-0123456789abcdef",
    );
    let rest = |extra_model: &str| {
        config(
            &upstream,
            &(model("gpt-4o") + extra_model),
            &format!(
                "auth:\n  keys:\n    - {{id: alice, secret: '{alice}'}}\n    - {{id: bob, secret: '{bob}'}}\n\
                 quotas:\n  keys:\n    alice: {{rpm: 3}}\n"
            ),
        )
    };
    let gw = Gateway::start(&rest(""));
    // The four requests must fall in one minute's window.
    if seconds_left_in_minute() < 8 {
        tokio::time::sleep(Duration::from_secs(seconds_left_in_minute() + 1)).await;
    }
    let minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let client = client();
    for i in 0..3 {
        assert_eq!(
            status(&client, &gw, "gpt-4o", Some(alice)).await,
            200,
            "request {i}"
        );
    }

    // An unrelated change (one more model), seen through bob, who has no limit.
    rewrite(&gw, &rest(&model("extra")));
    gw.signal("HUP");
    assert!(
        wait_for_status(&gw, "extra", Some(bob), 200).await,
        "not reloaded"
    );
    // The line is written just after the swap. (The file watcher may have seen the change
    // before the signal: then there are two.)
    assert!(
        eventually(TIMEOUT, || log_lines(
            &gw,
            &["Config reloaded", "shared_state=\"kept\""]
        ) >= 1)
        .await,
        "{}",
        gw.logs()
    );

    let fourth = status(&client, &gw, "gpt-4o", Some(alice)).await;
    let same_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        == minute;
    assert!(same_minute, "the test ran over a minute boundary");
    assert_eq!(fourth, 429, "the counter of alice's window was kept");
}

#[tokio::test]
async fn a_stream_open_during_a_reload_completes_on_its_snapshot() {
    const CHUNKS: usize = 10;
    let events: Vec<String> = (0..CHUNKS)
        .map(|i| sse_chat_chunk("s", &format!("w{i} ")))
        .collect();
    let slow = MockUpstream::start(Behavior::sse(events, Duration::from_millis(250)));
    let other = MockUpstream::start(Behavior::EchoChat);
    let gw = Gateway::start(&config(&slow, &model("old"), ""));

    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("old", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("w0"));

    // The model and its pool go; `new` is served by another upstream.
    let next = format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n  new:\n    targets: [{{pool: q}}]\n\
         pools:\n  q:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n",
        other.url()
    );
    rewrite(&gw, &next);
    gw.signal("HUP");
    assert!(wait_for_status(&gw, "new", None, 200).await, "not reloaded");
    assert_eq!(status(&client(), &gw, "old", None).await, 404);
    assert!(
        !slow.streams()[0].completed,
        "the stream was still open during the reload"
    );

    let mut text = String::from_utf8_lossy(&first).into_owned();
    let read_rest = async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    };
    tokio::time::timeout(TIMEOUT, read_rest)
        .await
        .expect("the stream ended");
    let data = parse_sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let content: String = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let expected: String = (0..CHUNKS).map(|i| format!("w{i} ")).collect();
    assert_eq!(content, expected);
    assert_eq!(slow.request_count(), 1);
}

#[tokio::test]
async fn a_sighup_during_startup_neither_ends_the_process_nor_is_lost() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let mut gw = Gateway::spawn(&config(&upstream, &model("gpt-4o"), ""));
    // Logged once `main` runs, before the server and its reload service start.
    assert!(
        eventually(TIMEOUT, || gw.logs().contains("config loaded")).await,
        "{}",
        gw.logs()
    );
    gw.signal("HUP");
    gw.wait_until_ready();
    assert!(
        eventually(TIMEOUT, || log_lines(&gw, &["Config reloaded", "sighup"])
            == 1)
        .await,
        "the early SIGHUP was not handled:\n{}",
        gw.logs()
    );
    assert_eq!(status(&client(), &gw, "gpt-4o", None).await, 200);
    assert!(gw.wait_for_exit(Duration::ZERO).is_none(), "still running");
}

#[tokio::test]
async fn a_pool_built_by_a_reload_is_probed_and_the_one_it_replaced_no_longer_is() {
    let first = MockUpstream::start(Behavior::EchoChat);
    let second = MockUpstream::start(Behavior::EchoChat);
    let probed = |upstream: &MockUpstream| {
        format!(
            "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
             listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
             models:\n{}\
             pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{interval: 100ms}}\n",
            model("gpt-4o"),
            upstream.url()
        )
    };
    let gw = Gateway::start(&probed(&first));
    assert!(
        first.wait_for_probes(2, TIMEOUT).await,
        "the first pool is probed"
    );

    rewrite(&gw, &probed(&second));
    gw.signal("HUP");
    assert!(
        second.wait_for_probes(2, TIMEOUT).await,
        "the new pool is not probed:\n{}",
        gw.logs()
    );
    // The old pool is gone with the old state, and its probe loop with it.
    let settled = first.probe_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        first.probe_count() <= settled + 1,
        "the replaced pool is still probed"
    );
    assert_eq!(status(&client(), &gw, "gpt-4o", None).await, 200);
    assert_eq!(second.request_count(), 1);
}
