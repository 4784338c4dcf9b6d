//! A `redis-server` of a test's own, on a free port, killed on drop: tests are
//! independent and may stop and restart their server.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{RedisOptions, RedisStore};

/// A `redis-server` of our own, killed on drop.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let mut server = RedisServer::stopped();
        server.restart();
        server
    }

    /// On a free port, not started yet.
    pub(crate) fn stopped() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer { port, child: None }
    }

    /// Starts (again) on the same port; returns once it accepts connections.
    pub(crate) fn restart(&mut self) {
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

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn store(&self, prefix: &str) -> RedisStore {
        RedisStore::new(&RedisOptions {
            url: self.url(),
            key_prefix: prefix.into(),
            // Generous: tests run in parallel on a loaded machine.
            timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// A plain connection, to look at keys as Redis holds them.
    pub(crate) async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
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
