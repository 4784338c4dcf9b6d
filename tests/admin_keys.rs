//! Gateway keys managed at run time through the admin API, over real sockets: a key made
//! at run time works at once, a disabled one is refused at once, limits change at once,
//! a rotated secret replaces the old one, and all of it survives a restart — kept in a
//! state file, or in Redis when limits are counted there.

mod common;

use std::path::Path;

use common::openai::*;
use common::*;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const CONFIG_KEY: &str = "sk-test-configured-0123456789abcdef";

/// A gateway whose admin API listens on `admin_port`; runtime keys kept in `state_file`
/// (or in `redis`).
fn gateway(
    upstream: &MockUpstream,
    admin_port: u16,
    state_file: &Path,
    redis: Option<&RedisServer>,
) -> Gateway {
    let state = redis.map_or(String::new(), |r| {
        format!(
            "state:\n  backend: redis\n  redis: {{url: '{}', timeout: 2s}}\n",
            r.url()
        )
    });
    let gw = Gateway::start(&format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         models:\n  gpt-4o:\n    targets: [{{pool: p}}]\n\
         pools:\n  p:\n    provider: openai\n    endpoints: [{{url: '{}'}}]\n    health_check: {{enabled: false}}\n\
         auth:\n  keys:\n    - {{id: configured, secret: '{CONFIG_KEY}'}}\n\
         admin:\n  address: 127.0.0.1:{admin_port}\n  token: {ADMIN_TOKEN}\n  state_file: '{}'\n{state}",
        upstream.url(),
        state_file.display(),
    ));
    // The admin listener is a service of its own: it may come up just after /health.
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
        }),
        "the admin listener did not come up:\n{}",
        gw.logs()
    );
    gw
}

struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    fn new(port: u16) -> Admin {
        Admin {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(ADMIN_TOKEN), method, path, body).await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

async fn chat(gw: &Gateway, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn keys_survive_a_restart(redis: Option<&RedisServer>) {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("keys.json");
    let admin_port = free_port();
    let gw = gateway(&upstream, admin_port, &state_file, redis);
    let admin = Admin::new(admin_port);

    // The admin token is required, and checked.
    for token in [None, Some("wrong-token-for-tests-0123456789")] {
        let (status, body) = admin.call_as(token, "GET", "/admin/keys", None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_admin_token");
    }

    // A key made at run time works at once.
    let (status, made) = admin
        .call(
            "POST",
            "/admin/keys",
            Some(json!({"id": "made", "team": "ops"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat(&gw, &secret).await.0, 200);
    let (status, dup) = admin
        .call("POST", "/admin/keys", Some(json!({"id": "configured"})))
        .await;
    assert_eq!(status, 409, "{dup}");

    // Limits and budgets change at once: a 1-token budget refuses the next request.
    let (status, body) = admin
        .call(
            "PATCH",
            "/admin/keys/made",
            Some(json!({"limits": {"budgets": [{"tokens": 1, "window": "lifetime"}]}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, refused) = chat(&gw, &secret).await;
    assert_eq!(status, 429, "{refused}");
    let (status, body) = admin
        .call(
            "PATCH",
            "/admin/keys/made",
            Some(json!({"limits": {"rpm": "many"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        admin
            .call("PATCH", "/admin/keys/made", Some(json!({"limits": null})))
            .await
            .0,
        200
    );
    assert_eq!(chat(&gw, &secret).await.0, 200);

    // Disabling is immediate, for a runtime key and for a configured one.
    for id in ["made", "configured"] {
        let (status, body) = admin
            .call(
                "PATCH",
                &format!("/admin/keys/{id}"),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(chat(&gw, &secret).await.0, 401);
    assert_eq!(chat(&gw, CONFIG_KEY).await.0, 401);
    assert_eq!(
        admin
            .call("PATCH", "/admin/keys/made", Some(json!({"enabled": true})))
            .await
            .0,
        200
    );

    // Rotation: the old secret stops working, the new one works.
    let (status, rotated) = admin.call("POST", "/admin/keys/made/rotate", None).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(chat(&gw, &secret).await.0, 401);
    assert_eq!(chat(&gw, &new_secret).await.0, 200);

    // The list shows both keys, with what they used.
    let (status, list) = admin.call("GET", "/admin/keys", None).await;
    assert_eq!(status, 200);
    let by_id = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    assert_eq!(by_id("made")["source"], "runtime");
    assert_eq!(by_id("made")["team"], "ops");
    assert_eq!(by_id("configured")["enabled"], false);
    // The secret is never listed.
    assert!(!list.to_string().contains(&new_secret));

    // Both survive a restart.
    drop(gw);
    let admin_port = free_port();
    let gw = gateway(&upstream, admin_port, &state_file, redis);
    assert_eq!(chat(&gw, &new_secret).await.0, 200);
    assert_eq!(chat(&gw, &secret).await.0, 401);
    assert_eq!(chat(&gw, CONFIG_KEY).await.0, 401);
    // Deleting the override brings the configured key back; deleting the key ends it.
    let admin = Admin::new(admin_port);
    assert_eq!(
        admin.call("DELETE", "/admin/keys/configured", None).await.0,
        200
    );
    assert_eq!(chat(&gw, CONFIG_KEY).await.0, 200);
    assert_eq!(admin.call("DELETE", "/admin/keys/made", None).await.0, 200);
    assert_eq!(chat(&gw, &new_secret).await.0, 401);
    assert_eq!(admin.call("DELETE", "/admin/keys/made", None).await.0, 404);
}

#[tokio::test]
async fn runtime_keys_kept_in_a_state_file_survive_a_restart() {
    keys_survive_a_restart(None).await;
}

#[tokio::test]
async fn runtime_keys_kept_in_redis_survive_a_restart() {
    let redis = RedisServer::start();
    keys_survive_a_restart(Some(&redis)).await;
}

#[tokio::test]
async fn bad_admin_requests_get_clear_errors() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let _gw = gateway(&upstream, admin_port, &dir.path().join("k.json"), None);
    let admin = Admin::new(admin_port);
    for (method, path, body, want) in [
        ("POST", "/admin/keys", json!({"nope": 1}), 400),
        ("POST", "/admin/keys", json!({"id": ""}), 400),
        (
            "POST",
            "/admin/keys",
            json!({"id": "x", "models": ["["]}),
            400,
        ),
        (
            "POST",
            "/admin/keys",
            json!({"id": "y", "expires": "tomorrow"}),
            400,
        ),
        ("PATCH", "/admin/keys/ghost", json!({"enabled": false}), 404),
        ("PATCH", "/admin/keys/configured", json!({"team": "t"}), 400),
        ("POST", "/admin/keys/configured/rotate", json!({}), 409),
        ("PUT", "/admin/pools", json!({}), 405),
    ] {
        let (status, reply) = admin.call(method, path, Some(body)).await;
        assert_eq!(status, want, "{method} {path}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    let (status, _) = admin.call("GET", "/admin/keys", None).await;
    assert_eq!(status, 200, "the registry is intact");
    assert!(
        !dir.path().join("k.json").exists() || {
            let kept: Value =
                serde_json::from_slice(&std::fs::read(dir.path().join("k.json")).unwrap()).unwrap();
            kept.as_object().unwrap().is_empty()
        }
    );
    let _ = ECHO_USAGE;
}

#[tokio::test]
async fn a_key_made_on_one_instance_works_on_another_sharing_redis() {
    let upstream = MockUpstream::start(Behavior::EchoChat);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let a = gateway(&upstream, port_a, &dir.path().join("a.json"), Some(&redis));
    let b = gateway(&upstream, port_b, &dir.path().join("b.json"), Some(&redis));
    let (status, made) = Admin::new(port_a)
        .call("POST", "/admin/keys", Some(json!({"id": "shared"})))
        .await;
    assert_eq!(status, 201, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat(&a, &secret).await.0, 200);
    // The other instance reads the shared records every second.
    let mut seen = 0;
    for _ in 0..100 {
        seen = chat(&b, &secret).await.0;
        if seen == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 200, "instance b never took the key");
    // A key switched off on b is refused on a.
    let (status, _) = Admin::new(port_b)
        .call(
            "PATCH",
            "/admin/keys/shared",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..100 {
        seen = chat(&a, &secret).await.0;
        if seen == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 401, "instance a never saw the key switched off");
}
