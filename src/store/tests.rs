//! Tests against real `redis-server` processes, one per test on a free port, so tests
//! are independent and may stop and restart their server.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_plugin::{Acquire, Acquired, Adjust, Lease, Release, Store, StoreError};

use super::*;

// === harness ===

use super::test_redis::RedisServer;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn counter(key: &str, amount: u64, limit: u64, expires_at_ms: Option<u64>) -> Acquire {
    Acquire {
        key: key.into(),
        amount,
        limit,
        expires_at_ms,
        lease: None,
    }
}

fn lease(key: &str, id: &str, limit: u64, ttl_ms: u64) -> Acquire {
    Acquire {
        key: key.into(),
        amount: 1,
        limit,
        expires_at_ms: None,
        lease: Some(Lease {
            id: id.into(),
            ttl_ms,
        }),
    }
}

fn adjust(key: &str, delta: i64, expires_at_ms: Option<u64>) -> Adjust {
    Adjust {
        key: key.into(),
        delta,
        expires_at_ms,
    }
}

fn release(key: &str, id: &str) -> Release {
    Release {
        key: key.into(),
        lease_id: id.into(),
    }
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| k.to_string()).collect()
}

/// Polls `check` every 20 ms until it holds or `within` has passed.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === RedisStore ===

#[tokio::test]
async fn acquire_charges_every_counter_or_none() {
    let server = RedisServer::start();
    let store = server.store("t:");
    let window = Some(now_ms() + 60_000);
    let items = [counter("a", 4, 10, window), counter("b", 4, 5, window)];

    assert_eq!(
        store.acquire(&items).await.unwrap(),
        Acquired::Granted(vec![4, 4])
    );
    // `b` would go to 8 > 5: nothing is charged, `a` included.
    assert_eq!(
        store.acquire(&items).await.unwrap(),
        Acquired::Refused {
            index: 1,
            current: 4
        }
    );
    assert_eq!(store.get(&keys(&["a", "b", "c"])).await.unwrap(), [4, 4, 0]);

    // A counter at its limit exactly is fine; one over is not.
    assert_eq!(
        store.acquire(&[counter("b", 1, 5, window)]).await.unwrap(),
        Acquired::Granted(vec![5])
    );
    assert_eq!(
        store.acquire(&[counter("b", 1, 5, window)]).await.unwrap(),
        Acquired::Refused {
            index: 0,
            current: 5
        }
    );
    // The same counter twice in one call counts both charges.
    assert_eq!(
        store
            .acquire(&[counter("d", 3, 5, window), counter("d", 3, 5, window)])
            .await
            .unwrap(),
        Acquired::Refused {
            index: 1,
            current: 0
        }
    );
    assert_eq!(store.acquire(&[]).await.unwrap(), Acquired::Granted(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_grant_exactly_the_limit_between_them() {
    let server = RedisServer::start();
    let gateways = [Arc::new(server.store("t:")), Arc::new(server.store("t:"))];
    let window = Some(now_ms() + 60_000);

    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = gateways[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let items = [
                counter("rpm", 1, 1000, window),
                counter("tpm", 10, 500, window),
                lease("conc", &format!("req-{i}"), 20, 60_000),
            ];
            store.acquire(&items).await.unwrap()
        }));
    }
    let mut granted = 0;
    for task in tasks {
        if let Acquired::Granted(_) = task.await.unwrap() {
            granted += 1;
        }
    }
    // 20 leases are the tightest limit (tpm allows 50).
    assert_eq!(granted, 20);
    assert_eq!(
        gateways[0]
            .get(&keys(&["rpm", "tpm", "conc"]))
            .await
            .unwrap(),
        [20, 200, 20]
    );
}

#[tokio::test]
async fn counters_expire_at_their_window_end_and_lifetime_ones_never() {
    let server = RedisServer::start();
    let store = server.store("t:");
    let mut raw = server.raw().await;

    let end = now_ms() + 300;
    let granted = store
        .acquire(&[
            counter("minute", 5, 10, Some(end)),
            counter("life", 5, 10, None),
        ])
        .await
        .unwrap();
    assert_eq!(granted, Acquired::Granted(vec![5, 5]));
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("t:minute")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((0..=300).contains(&ttl), "{ttl}");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("t:life")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "a lifetime counter has no expiry");

    assert!(
        eventually(Duration::from_secs(2), || async {
            store.get(&keys(&["minute"])).await.unwrap() == [0]
        })
        .await
    );
    assert_eq!(store.get(&keys(&["life"])).await.unwrap(), [5]);
    // An expired counter starts again from zero.
    assert_eq!(
        store
            .acquire(&[counter("minute", 10, 10, Some(now_ms() + 60_000))])
            .await
            .unwrap(),
        Acquired::Granted(vec![10])
    );
}

#[tokio::test]
async fn leases_hold_a_slot_until_released_or_expired() {
    let server = RedisServer::start();
    let store = server.store("t:");
    let mut raw = server.raw().await;

    for (id, held) in [("r1", 1), ("r2", 2)] {
        assert_eq!(
            store
                .acquire(&[lease("conc", id, 2, 60_000)])
                .await
                .unwrap(),
            Acquired::Granted(vec![held])
        );
    }
    assert_eq!(
        store
            .acquire(&[lease("conc", "r3", 2, 60_000)])
            .await
            .unwrap(),
        Acquired::Refused {
            index: 0,
            current: 2
        }
    );
    // Acquiring a lease already held renews it rather than taking a second slot.
    assert_eq!(
        store
            .acquire(&[lease("conc", "r2", 2, 60_000)])
            .await
            .unwrap(),
        Acquired::Granted(vec![2])
    );
    // The set expires with its last lease.
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("t:conc")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((59_000..=60_000).contains(&ttl), "{ttl}");

    store.adjust(&[], &[release("conc", "r1")]).await.unwrap();
    assert_eq!(store.get(&keys(&["conc"])).await.unwrap(), [1]);
    assert_eq!(
        store
            .acquire(&[lease("conc", "r3", 2, 60_000)])
            .await
            .unwrap(),
        Acquired::Granted(vec![2])
    );

    // A lease nobody releases (a crashed gateway) ends at its TTL.
    assert_eq!(
        store.acquire(&[lease("short", "x", 1, 200)]).await.unwrap(),
        Acquired::Granted(vec![1])
    );
    assert_eq!(
        store.acquire(&[lease("short", "y", 1, 200)]).await.unwrap(),
        Acquired::Refused {
            index: 0,
            current: 1
        }
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            store.get(&keys(&["short"])).await.unwrap() == [0]
        })
        .await
    );
    assert_eq!(
        store.acquire(&[lease("short", "y", 1, 200)]).await.unwrap(),
        Acquired::Granted(vec![1])
    );
}

#[tokio::test]
async fn adjust_never_goes_below_zero_nor_resurrects_a_counter() {
    let server = RedisServer::start();
    let store = server.store("t:");
    let mut raw = server.raw().await;
    let window = Some(now_ms() + 60_000);

    store
        .acquire(&[counter("tpm", 5, 100, window)])
        .await
        .unwrap();
    store
        .adjust(&[adjust("tpm", 7, window)], &[])
        .await
        .unwrap();
    assert_eq!(store.get(&keys(&["tpm"])).await.unwrap(), [12]);
    store
        .adjust(&[adjust("tpm", -20, window)], &[])
        .await
        .unwrap();
    assert_eq!(store.get(&keys(&["tpm"])).await.unwrap(), [0]);
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("t:tpm")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 0, "clamping keeps the window's expiry ({ttl})");

    // A missing (expired) counter is left alone by a negative delta …
    store
        .adjust(&[adjust("gone", -3, window)], &[])
        .await
        .unwrap();
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg("t:gone")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    // … and created, with its expiry, by a positive one.
    store
        .adjust(&[adjust("new", 3, window), adjust("life", 2, None)], &[])
        .await
        .unwrap();
    assert_eq!(store.get(&keys(&["new", "life"])).await.unwrap(), [3, 2]);
    let ttls: Vec<i64> = ::redis::pipe()
        .cmd("PTTL")
        .arg("t:new")
        .cmd("PTTL")
        .arg("t:life")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttls[0] > 0 && ttls[1] == -1, "{ttls:?}");

    // Releasing an unknown lease is harmless.
    store.adjust(&[], &[release("conc", "nope")]).await.unwrap();
}

#[tokio::test]
async fn prefixes_keep_deployments_apart() {
    let server = RedisServer::start();
    let blue = server.store("blue:");
    let green = server.store("green:");
    let window = Some(now_ms() + 60_000);

    blue.acquire(&[counter("rpm", 3, 3, window)]).await.unwrap();
    assert_eq!(
        green
            .acquire(&[counter("rpm", 3, 3, window)])
            .await
            .unwrap(),
        Acquired::Granted(vec![3])
    );
    assert_eq!(
        blue.acquire(&[counter("rpm", 1, 3, window)]).await.unwrap(),
        Acquired::Refused {
            index: 0,
            current: 3
        }
    );
    let mut raw = server.raw().await;
    let mut stored: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    stored.sort();
    assert_eq!(stored, ["blue:rpm", "green:rpm"]);
}

#[tokio::test]
async fn scripts_are_reloaded_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let store = server.store("t:");
    store.get(&keys(&["a"])).await.unwrap();
    server.stop();
    server.restart();
    // The first call after a restart may see the dropped connection; the next one
    // reconnects and must find its scripts gone (NOSCRIPT) and load them again.
    let _ = store.get(&keys(&["a"])).await;
    assert_eq!(
        store
            .acquire(&[counter("a", 1, 1, Some(now_ms() + 60_000))])
            .await
            .unwrap(),
        Acquired::Granted(vec![1])
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_within_the_timeout() {
    let mut server = RedisServer::start();
    server.stop();
    let store = RedisStore::new(&RedisOptions {
        url: server.url(),
        key_prefix: "t:".into(),
        timeout: Duration::from_millis(50),
    })
    .unwrap();
    let started = Instant::now();
    let error = store.get(&keys(&["a"])).await.unwrap_err();
    assert!(error.0.starts_with("redis"), "{error}");
    assert!(started.elapsed() < Duration::from_millis(500));

    assert!(
        RedisStore::new(&RedisOptions {
            url: "http://nope".into(),
            key_prefix: String::new(),
            timeout: Duration::from_millis(50),
        })
        .is_err()
    );
}

#[tokio::test]
async fn a_connection_that_never_answers_is_replaced_after_a_timeout() {
    let mut server = RedisServer::stopped();
    // Something that accepts connections and never answers (a frozen server, or a
    // network that drops packets), holding every connection open.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", server.port))
        .await
        .unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepting = tokio::spawn({
        let held = held.clone();
        async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                held.lock().unwrap().push(socket);
            }
        }
    });
    let store = RedisStore::new(&RedisOptions {
        url: server.url(),
        key_prefix: "t:".into(),
        timeout: Duration::from_millis(100),
    })
    .unwrap();
    let error = store.get(&keys(&["a"])).await.unwrap_err();
    assert!(error.0.contains("timed out"), "{error}");

    // The real Redis takes the port; the silent connection stays open.
    accepting.abort();
    let _ = accepting.await;
    server.restart();
    assert_eq!(store.get(&keys(&["a"])).await.unwrap(), [0]);
    assert_eq!(held.lock().unwrap().len(), 1);
}

// === ResilientStore ===

/// Tests' retry interval: short, to keep waits short.
const RETRY: Duration = Duration::from_millis(500);

fn resilient(server: &RedisServer, on_error: OnError) -> ResilientStore {
    ResilientStore::new(Arc::new(server.store("t:")), local_store(), on_error, RETRY)
}

/// Calls `get` until a call reaches Redis again (bounded).
async fn wait_until_back(store: &ResilientStore) {
    assert!(
        eventually(Duration::from_secs(3), || async {
            let _ = store.get(&keys(&["probe"])).await;
            store.redis_up()
        })
        .await,
        "Redis did not come back"
    );
}

#[tokio::test]
async fn fail_open_serves_from_local_while_redis_is_down_then_returns_to_redis() {
    let mut server = RedisServer::start();
    let store = resilient(&server, OnError::FailOpen);
    let direct = server.store("t:");
    let window = Some(now_ms() + 60_000);
    let rpm = |n| [counter("rpm", n, 5, window)];

    assert_eq!(
        store.acquire(&rpm(2)).await.unwrap(),
        Acquired::Granted(vec![2])
    );
    assert!(store.redis_up());

    server.stop();
    // Local limits start from nothing: this instance alone enforces 5.
    assert_eq!(
        store.acquire(&rpm(3)).await.unwrap(),
        Acquired::Granted(vec![3])
    );
    assert!(!store.redis_up());
    assert_eq!(store.failures(), 1);
    assert_eq!(
        store.acquire(&rpm(2)).await.unwrap(),
        Acquired::Granted(vec![5])
    );
    assert_eq!(
        store.acquire(&rpm(1)).await.unwrap(),
        Acquired::Refused {
            index: 0,
            current: 5
        }
    );
    // Within the retry interval, calls do not try Redis at all.
    assert_eq!(store.failures(), 1);
    assert_eq!(store.bypassed(), 3);

    server.restart();
    wait_until_back(&store).await;
    assert!(store.failures() >= 1);
    // Redis restarted empty (no persistence): calls count there again.
    assert_eq!(
        store.acquire(&rpm(4)).await.unwrap(),
        Acquired::Granted(vec![4])
    );
    assert_eq!(direct.get(&keys(&["rpm"])).await.unwrap(), [4]);
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down_then_returns_to_redis() {
    let mut server = RedisServer::start();
    let store = resilient(&server, OnError::FailClosed);
    let window = Some(now_ms() + 60_000);
    let rpm = [counter("rpm", 1, 5, window)];

    assert_eq!(
        store.acquire(&rpm).await.unwrap(),
        Acquired::Granted(vec![1])
    );
    server.stop();
    assert!(matches!(store.acquire(&rpm).await, Err(StoreError(_))));
    assert!(!store.redis_up());
    assert!(store.get(&keys(&["rpm"])).await.is_err());
    assert!(
        store
            .adjust(&[adjust("rpm", -1, window)], &[])
            .await
            .is_err()
    );
    assert_eq!(store.failures(), 1, "one failure, then no hammering");

    server.restart();
    wait_until_back(&store).await;
    assert_eq!(
        store.acquire(&rpm).await.unwrap(),
        Acquired::Granted(vec![1])
    );
}

#[tokio::test]
async fn a_down_redis_is_tried_by_one_call_per_interval() {
    let mut server = RedisServer::start();
    let store = Arc::new(resilient(&server, OnError::FailOpen));
    server.stop();
    store.get(&keys(&["a"])).await.unwrap();
    assert_eq!(store.failures(), 1);

    // Many calls over about two intervals: at most one try per interval.
    let started = Instant::now();
    while started.elapsed() < RETRY + RETRY / 2 {
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.get(&keys(&["a"])).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), [0]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One try per interval started, plus the first failure; a stalled machine may
    // stretch the loop, so the bound follows the time it really took.
    let intervals = (started.elapsed().as_millis() / RETRY.as_millis()) as u64;
    let failures = store.failures();
    assert!(
        (2..=intervals + 2).contains(&failures),
        "{failures} tries in {intervals} intervals"
    );
}

#[tokio::test]
async fn leases_granted_locally_are_released_locally_after_redis_returns() {
    let mut server = RedisServer::start();
    let store = resilient(&server, OnError::FailOpen);
    let direct = server.store("t:");

    assert_eq!(
        store
            .acquire(&[lease("conc", "r1", 2, 60_000)])
            .await
            .unwrap(),
        Acquired::Granted(vec![1])
    );
    server.stop();
    assert_eq!(
        store
            .acquire(&[lease("conc", "r2", 2, 60_000)])
            .await
            .unwrap(),
        Acquired::Granted(vec![1]),
        "granted by the local store"
    );
    server.restart();
    wait_until_back(&store).await;
    assert_eq!(store.local.get(&keys(&["conc"])).await.unwrap(), [1]);

    store.adjust(&[], &[release("conc", "r2")]).await.unwrap();
    assert_eq!(store.local.get(&keys(&["conc"])).await.unwrap(), [0]);
    assert!(store.local_leases.lock().unwrap().ends.is_empty());
    // Redis lost its lease with the restart; a new one is counted there.
    assert_eq!(
        store
            .acquire(&[lease("conc", "r3", 2, 60_000)])
            .await
            .unwrap(),
        Acquired::Granted(vec![1])
    );
    assert_eq!(direct.get(&keys(&["conc"])).await.unwrap(), [1]);
}

#[tokio::test]
async fn a_redis_down_at_startup_fails_open_from_the_first_call() {
    let mut server = RedisServer::start();
    server.stop();
    let store = resilient(&server, OnError::FailOpen);
    assert_eq!(
        store
            .acquire(&[counter("rpm", 1, 1, Some(now_ms() + 60_000))])
            .await
            .unwrap(),
        Acquired::Granted(vec![1])
    );
    assert!(!store.redis_up());
    server.restart();
    wait_until_back(&store).await;
}

// === config ===

fn parse(yaml: &str) -> Result<StateConfig, serde_saphyr::Error> {
    serde_saphyr::from_str(yaml)
}

#[test]
fn state_config_defaults_to_local_and_redis_defaults_are_sane() {
    let config = parse("{}").unwrap();
    assert_eq!(config, StateConfig::default());
    assert_eq!(config.backend, Backend::Local);
    let redis = parse("backend: redis").unwrap().redis;
    assert_eq!(redis.url, "redis://127.0.0.1:6379");
    assert_eq!(redis.key_prefix, "tollgate:");
    assert_eq!(redis.timeout, Duration::from_millis(50));
    assert_eq!(redis.on_error, OnError::FailOpen);
}

#[test]
fn state_config_reads_every_key_and_rejects_unknown_ones() {
    let config = parse(
        "backend: redis\n\
         redis:\n  url: redis://cache:6380/2\n  key_prefix: 'prod:'\n  \
         timeout: 20ms\n  on_error: fail_closed\n",
    )
    .unwrap();
    assert_eq!(
        config.redis,
        RedisConfig {
            url: "redis://cache:6380/2".into(),
            key_prefix: "prod:".into(),
            timeout: Duration::from_millis(20),
            on_error: OnError::FailClosed,
        }
    );
    assert!(parse("backend: memcached").is_err());
    assert!(parse("redis: {urls: x}").is_err());
    assert!(parse("redis: {on_error: ignore}").is_err());
    assert!(parse("redis: {timeout: 0s}").is_err());
    assert!(parse("shards: 2").is_err());
}

#[tokio::test]
async fn build_gives_the_configured_backend_without_connecting() {
    let local = build(&StateConfig::default()).unwrap();
    assert_eq!(local.backend(), "local");

    // Nothing listens there: building must not care.
    let config = parse("backend: redis\nredis: {url: 'redis://127.0.0.1:1'}").unwrap();
    let state = build_state(&config).unwrap();
    assert_eq!(state.store.backend(), "redis");
    let redis = state.redis.unwrap();
    assert!(redis.redis_up());
    assert_eq!(redis.failures(), 0);

    let bad = parse("backend: redis\nredis: {url: 'http://x'}").unwrap();
    assert!(build(&bad).is_err());
}
