//! Tests against real `redis-server` processes, one per test on a free port, so tests
//! are independent and may stop and restart their server.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_plugin::{Acquire, Acquired, Adjust, Lease, Release, Store};

use super::*;

// === harness ===

/// A `redis-server` of our own, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> RedisServer {
        let mut server = RedisServer::stopped();
        server.restart();
        server
    }

    /// On a free port, not started yet.
    fn stopped() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer { port, child: None }
    }

    /// Starts (again) on the same port; returns once it accepts connections.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn store(&self, prefix: &str) -> RedisStore {
        RedisStore::new(&RedisOptions {
            url: self.url(),
            key_prefix: prefix.into(),
            // Generous: tests run in parallel on a loaded machine.
            timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// A plain connection, to look at keys as Redis holds them.
    async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

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
