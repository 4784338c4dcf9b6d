//! Shared support for Tollgate's integration tests.
//!
//! Everything here uses real sockets on 127.0.0.1; only the upstream model is mocked.
//!
//! - [`MockUpstream`]: a raw HTTP/1.1 (optionally TLS) server that plays an
//!   OpenAI-compatible upstream, answers according to a [`Behavior`], and records what
//!   it received, when each streamed chunk was sent, and when the gateway hung up.
//! - [`TestCa`]: a certificate authority made at run time, for TLS upstreams and listeners.
//! - [`Gateway`]: the real `tollgate` binary, run as a child process on a free port.
//! - [`RedisServer`]: a `redis-server` on a free port, stopped and restarted at will.
//! - [`openai`]: builders for OpenAI response bodies and SSE events, and an SSE parser.
//! - [`free_port`], [`raw_request`], [`wait_until`], [`eventually`]: small utilities.
//!
//! The mock upstream runs on its own thread and Tokio runtime, so it works the same from
//! `#[test]` and `#[tokio::test]`, and a test that blocks its own runtime (a synchronous
//! [`raw_request`], [`Gateway::start`]) cannot starve it. Every wait here is bounded.
//!
//! Use from a test file with `mod common;` and `use common::*;`.

#![allow(dead_code, unused_imports)]

mod gateway;
mod http1;
pub mod openai;
mod redis_server;
mod tls;
mod upstream;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use gateway::{Gateway, fill_placeholders};
pub use openai::{parse_sse_data, sse_chat_chunk};
pub use redis_server::{RedisServer, RedisValue};
pub use tls::{IssuedCert, TestCa};
pub use upstream::{Behavior, MOCK_HEADER, MockUpstream, RecordedRequest, StreamLog};

/// How long [`raw_request`] waits for the peer to close the connection.
pub const RAW_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A port that was free a moment ago on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Sends `bytes` as they are and returns everything read back until the peer closes the
/// connection or [`RAW_REQUEST_TIMEOUT`] passes. For malformed-input tests: send
/// `Connection: close` (or expect to wait for the timeout) when the request is well formed.
pub fn raw_request(addr: impl ToSocketAddrs, bytes: &[u8]) -> Vec<u8> {
    raw_request_with_timeout(addr, bytes, RAW_REQUEST_TIMEOUT)
}

/// [`raw_request`] with a chosen overall timeout.
pub fn raw_request_with_timeout(
    addr: impl ToSocketAddrs,
    bytes: &[u8],
    timeout: Duration,
) -> Vec<u8> {
    let addr = addr
        .to_socket_addrs()
        .expect("resolve address")
        .next()
        .expect("an address");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).expect("connect for raw_request");
    // The server may close before taking everything (that is often the point): keep going
    // and read whatever it answered.
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
    read_until_close(&mut stream, Instant::now() + timeout)
}

/// Reads until EOF, an error, or `deadline`.
fn read_until_close(stream: &mut TcpStream, deadline: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return out;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.x response (`HTTP/1.1 400 Bad Request...` → 400).
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Polls `condition` every 5 ms until it holds (true) or `timeout` passes (false).
/// Blocks the thread: in async tests prefer [`eventually`].
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Async [`wait_until`]: polls `condition` every 5 ms without blocking the runtime.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
