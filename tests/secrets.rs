//! No secret the gateway holds ever leaves it: provider keys, client API keys, the JWT
//! signing secret and the admin token are looked for in the gateway's log (at debug
//! level, access log included), in `/metrics` (per-key series on), in every response
//! body and header a client got, and in the admin views (`/admin/config`, `/admin/keys`,
//! `/admin/pools`) — after traffic that includes failures, refusals and an upstream that
//! echoes the credential it was sent.

mod common;

use common::*;
use serde_json::json;

const PROVIDER_KEY: &str = "sk-provider-SECRET-7f3a9c21e4b8d605";
const CLIENT_KEY: &str = "tg-client-SECRET-51c0de9a7b3e2f48";
const JWT_SECRET: &str = "jwt-hmac-SECRET-a8d2c7e4f1b9063527de";
const ADMIN_TOKEN: &str = "admin-SECRET-3e9b1f7a2c5d8046";

/// Every secret, and a distinctive inner part of each (so a truncated or re-quoted copy
/// is found too).
fn needles() -> Vec<(&'static str, String)> {
    [
        ("provider key", PROVIDER_KEY),
        ("client key", CLIENT_KEY),
        ("JWT secret", JWT_SECRET),
        ("admin token", ADMIN_TOKEN),
    ]
    .into_iter()
    .flat_map(|(what, s)| {
        let inner = s.split_once("SECRET-").unwrap().1[..12].to_owned();
        [(what, s.to_owned()), (what, inner)]
    })
    .collect()
}

fn assert_clean(place: &str, text: &str) {
    for (what, needle) in needles() {
        assert!(
            !text.contains(&needle),
            "the {what} ({needle}) appears in {place}:\n{}",
            text.chars().take(4000).collect::<String>()
        );
    }
}

/// A JWT signed with the configured secret (HS256), by hand: header.claims.signature.
fn jwt(claims: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signing = format!("{header}.{body}");
    let key = openssl::pkey::PKey::hmac(JWT_SECRET.as_bytes()).unwrap();
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    signer.update(signing.as_bytes()).unwrap();
    format!("{signing}.{}", b64(&signer.sign_to_vec().unwrap()))
}

#[tokio::test]
async fn secrets_never_reach_logs_metrics_error_bodies_or_admin_views() {
    // An upstream that echoes the Authorization header it got, in an error (as some do
    // when they refuse a key), for requests whose content says "echo".
    let upstream = MockUpstream::start(Behavior::custom(|req| {
        if req.body_text().contains("echo") {
            let auth = req.header("authorization").unwrap_or("").to_owned();
            Behavior::json(
                401,
                json!({"error": {"message": format!("Incorrect API key provided: {auth}"), "type": "invalid_request_error", "code": "invalid_api_key"}}),
            )
        } else {
            Behavior::EchoChat
        }
    }));
    let admin_port = free_port();
    let yaml = format!(
        "server: {{pid_file: '{{PID_FILE}}', upgrade_sock: '{{UPGRADE_SOCK}}', threads: 2}}\n\
         listeners:\n  - address: 127.0.0.1:{{PORT}}\n\
         log: {{level: debug}}\n\
         admin:\n  address: 127.0.0.1:{admin_port}\n  token: ${{ADMIN_TOKEN}}\n  metrics: {{per_key: true}}\n  state_file: '{{TMP_DIR}}/keys.json'\n\
         auth:\n  keys:\n    - {{id: app, secret: '${{CLIENT_KEY}}', team: t1}}\n\
         \x20 jwt: {{algorithms: [HS256], hs256_secret: '${{JWT_SECRET}}'}}\n\
         models:\n  gpt-4o: {{targets: [{{pool: p}}]}}\n\
         pools:\n  p:\n    provider: openai\n    endpoints:\n      - url: '{}'\n        api_key: ${{PROVIDER_KEY}}\n\
         \x20   health_check: {{enabled: false}}\n",
        upstream.url()
    );
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            ("PROVIDER_KEY", PROVIDER_KEY),
            ("CLIENT_KEY", CLIENT_KEY),
            ("JWT_SECRET", JWT_SECRET),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
        }),
        "admin listener"
    );
    let client = reqwest::Client::new();
    let chat = |content: &str, stream: bool| json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": content}]});
    let token = jwt(json!({"sub": "svc", "exp": 4_000_000_000u64}));
    let near_miss = format!("{}x", &CLIENT_KEY[..CLIENT_KEY.len() - 1]);
    // (credential header value, body)
    let requests = vec![
        (format!("Bearer {CLIENT_KEY}"), chat("hello", false)),
        (format!("Bearer {CLIENT_KEY}"), chat("hello", true)),
        (format!("Bearer {token}"), chat("hello", false)),
        (format!("Bearer {near_miss}"), chat("hello", false)),
        (format!("Bearer {JWT_SECRET}"), chat("hello", false)),
        (format!("Bearer {PROVIDER_KEY}"), chat("hello", false)),
        (format!("Bearer {CLIENT_KEY}"), chat("echo", false)),
        (
            format!("Bearer {CLIENT_KEY}"),
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            format!("Bearer {CLIENT_KEY}"),
            json!({"model": "gpt-4o", "messages": "bad"}),
        ),
    ];
    let mut statuses = Vec::new();
    for (auth, body) in requests {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", &auth)
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        let headers = format!("{:?}", resp.headers());
        assert_clean("response headers", &headers);
        let text = resp.text().await.unwrap();
        assert_clean(&format!("a response body ({body})"), &text);
    }
    assert_eq!(statuses, [200, 200, 200, 401, 401, 401, 401, 404, 400]);

    let admin = |path: &str| {
        client
            .get(format!("http://127.0.0.1:{admin_port}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    // A key made at run time: its secret is shown once, at creation, and nowhere after.
    let made: serde_json::Value = client
        .post(format!("http://127.0.0.1:{admin_port}/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "runtime", "team": "t2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runtime_secret = made["secret"]
        .as_str()
        .expect("a created key shows its secret")
        .to_owned();
    let wrong_admin = client
        .get(format!("http://127.0.0.1:{admin_port}/admin/config"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_admin.status(), 401);
    assert_clean("the admin 401", &wrong_admin.text().await.unwrap());

    for path in ["/admin/config", "/admin/keys", "/admin/pools", "/metrics"] {
        let resp = admin(path).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let text = resp.text().await.unwrap();
        assert_clean(path, &text);
        assert!(
            !text.contains(&runtime_secret),
            "the runtime key's secret is in {path}"
        );
    }
    // The log, written after each response: wait for the last request's line.
    assert!(
        wait_until(std::time::Duration::from_secs(5), || gw
            .logs()
            .contains("\"status\":400")),
        "access log"
    );
    let logs = gw.logs();
    assert!(logs.contains("DEBUG"), "the log was at debug level");
    assert_clean("the gateway's log", &logs);
    assert!(
        !logs.contains(&runtime_secret),
        "the runtime key's secret is in the log"
    );
}
