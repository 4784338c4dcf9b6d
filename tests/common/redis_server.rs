//! [`RedisServer`]: a `redis-server` of the test's own on a free port (no persistence),
//! killed on drop, that can be stopped and started again on the same port; and a few
//! reads of what it holds, for asserting on the gateway's counters.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use super::free_port;

/// How long `redis-server` may take to accept connections.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) `redis-server`. Dropping it kills the process and reaps it.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

/// What one Redis key holds: a counter's value, or a sorted set's members (leases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisValue {
    Counter(u64),
    Leases(Vec<String>),
    Other(String),
}

impl RedisServer {
    /// Starts on a free port; returns once it accepts connections.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts again, on the same port, with nothing in it (no persistence).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        // Ready when *this* server answers PING: another process could hold the port
        // (then ours exits, which is reported).
        while !answers_ping(self.port) {
            if let Some(status) = child.try_wait().expect("try_wait redis-server") {
                panic!(
                    "redis-server on port {} exited ({status}) before accepting",
                    self.port
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not accept connections within {REDIS_START_TIMEOUT:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL) and reaps it; its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection of the test's own.
    pub async fn connect(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis client");
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connecting to redis timed out")
        .expect("connect to redis")
    }

    /// The integer value of a counter key (full name, prefix included); 0 if missing.
    pub async fn counter(&self, key: &str) -> u64 {
        let mut conn = self.connect().await;
        let value: Option<u64> = conn.get(key).await.expect("GET counter");
        value.unwrap_or(0)
    }

    /// Every key matching `pattern` with what it holds, sorted by name.
    pub async fn snapshot(&self, pattern: &str) -> BTreeMap<String, RedisValue> {
        let mut conn = self.connect().await;
        let keys: Vec<String> = conn.keys(pattern).await.expect("KEYS");
        let mut out = BTreeMap::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("TYPE");
            let value = match kind.as_str() {
                "string" => {
                    let v: String = conn.get(&key).await.expect("GET");
                    v.parse().map_or(RedisValue::Other(v), RedisValue::Counter)
                }
                "zset" => {
                    let members: Vec<String> = conn.zrange(&key, 0, -1).await.expect("ZRANGE");
                    RedisValue::Leases(members)
                }
                // Expired between KEYS and TYPE.
                "none" => continue,
                other => RedisValue::Other(other.to_owned()),
            };
            out.insert(key, value);
        }
        out
    }

    /// Polls `key` every 20 ms until it equals `expected` or `timeout` passes; the last
    /// value seen.
    pub async fn wait_for_counter(&self, key: &str, expected: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.counter(key).await;
            if value == expected || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls every 20 ms until no concurrency lease is held, i.e. every request has
    /// settled (its token and cost corrections are written with its lease's release);
    /// whether that happened within `timeout`.
    pub async fn wait_for_no_leases(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let held = self
                .snapshot("*")
                .await
                .values()
                .any(|v| matches!(v, RedisValue::Leases(_)));
            if !held {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The number of members of a sorted set (live and expired leases alike).
    pub async fn zcard(&self, key: &str) -> u64 {
        let mut conn = self.connect().await;
        conn.zcard(key).await.expect("ZCARD")
    }
}

/// Whether a Redis server on 127.0.0.1:`port` answers `PING` with `+PONG`.
fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
