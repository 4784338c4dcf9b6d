//! A deadline for reading each request head on HTTP/1 client connections.
//!
//! Pingora times out each read of a request head, not the head as a whole, so a client
//! that trickles a byte at a time (slowloris) holds a connection for as long as it
//! likes. [`HeadDeadlineApp`] wraps the proxy's service and hands it connections whose
//! reads fail once a head has been arriving for longer than `limits.header_read_timeout`:
//! counted from the accept for a connection's first request, and from the first byte of
//! each later one (the wait between requests is the keep-alive idle timeout, which the
//! gateway sets per response). The connection is then closed without an answer, as
//! nginx does for `client_header_timeout`.
//!
//! Only the head is watched: bodies have `limits.body_read_timeout`, and responses may
//! take as long as their upstream. HTTP/2 connections are passed through untouched (h2
//! has its own idle timeout and bounded header lists).
//!
//! The common case costs no timer: a head that arrives in one read ends the watch before
//! any clock is set; the timer is made only when a head is still incomplete and the
//! socket has nothing more to read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::state::State;

/// The proxy service `A`, with every HTTP/1 connection it gets watched by a
/// [`HeadDeadline`].
pub struct HeadDeadlineApp<A> {
    inner: Arc<A>,
    state: Arc<ArcSwap<State>>,
}

impl<A> HeadDeadlineApp<A> {
    pub fn new(inner: A, state: Arc<ArcSwap<State>>) -> Self {
        HeadDeadlineApp {
            inner: Arc::new(inner),
            state,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadDeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            let limit = self.state.load().config.limits.header_read_timeout;
            Box::new(HeadDeadline::new(stream, limit))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where a connection is in its request/response cycle, as far as reads and writes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A head is due, started at `since`; `last` holds the last two bytes read of it (to
    /// find a blank line split across reads) and `begun` whether any byte other than an
    /// empty line's was read.
    Head {
        since: Instant,
        last: [u8; 2],
        begun: bool,
    },
    /// The head was read; the body and the response follow. Once the response is being
    /// `written`, the next byte read starts a new head (until then the wait is the
    /// keep-alive idle timeout's).
    AfterHead { written: bool },
}

impl Phase {
    fn head_from_now() -> Phase {
        Phase::Head {
            since: Instant::now(),
            last: [0; 2],
            begun: false,
        }
    }
}

/// A client connection whose request heads must arrive within `limit`.
pub struct HeadDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl HeadDeadline {
    pub fn new(inner: Stream, limit: Duration) -> Self {
        HeadDeadline {
            inner,
            limit,
            phase: Phase::head_from_now(),
            timer: None,
        }
    }

    /// Follows what was just read: the start and the end of a head.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // After a response began, the next bytes are the client's next request (sent
        // while the response is still going, when it pipelines).
        if self.phase == (Phase::AfterHead { written: true }) {
            self.phase = Phase::head_from_now();
            self.timer = None;
        }
        if let Phase::Head { last, begun, .. } = &mut self.phase
            && head_ends(last, begun, bytes)
        {
            // What follows the head (a body, a pipelined request) is not watched until
            // a response has been written.
            self.phase = Phase::AfterHead { written: false };
            self.timer = None;
        }
    }

    /// Whether the head being read is overdue, and how to end the connection then.
    fn overdue(&mut self, cx: &mut Context<'_>) -> Overdue {
        let Phase::Head { since, begun, .. } = self.phase else {
            return Overdue::No;
        };
        let deadline = since + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            Overdue::No
        } else if begun {
            Overdue::Head(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "request head not complete within header_read_timeout ({:?})",
                    self.limit
                ),
            ))
        } else {
            Overdue::Silent
        }
    }
}

enum Overdue {
    No,
    /// Nothing of a request came: the connection ends as if the client had closed it.
    Silent,
    /// A head began but did not end in time: a read error, which Pingora logs.
    Head(io::Error),
}

/// Whether a head ends in `bytes`, given the last two bytes of the head read before them
/// (updated). Empty lines before a request line are skipped, as HTTP/1.1 allows; lines
/// may end in CRLF or a bare LF. Only line ends are looked at (memchr), and the bytes of a
/// line only until the request line has begun.
fn head_ends(last: &mut [u8; 2], begun: &mut bool, bytes: &[u8]) -> bool {
    let not_line_end = |b: &u8| *b != b'\r' && *b != b'\n';
    let mut from = 0;
    for i in memchr::memchr_iter(b'\n', bytes) {
        if !*begun && bytes[from..i].iter().any(not_line_end) {
            *begun = true;
        }
        // The two bytes before this LF, reaching back into earlier reads.
        let before = |n: usize| match i.checked_sub(n) {
            Some(at) => bytes[at],
            None => last[2 - (n - i)],
        };
        let (b1, b2) = (before(1), before(2));
        if *begun && (b1 == b'\n' || (b1 == b'\r' && b2 == b'\n')) {
            return true;
        }
        from = i + 1;
    }
    if !*begun && bytes[from..].iter().any(not_line_end) {
        *begun = true;
    }
    *last = match bytes {
        [] => *last,
        [b] => [last[1], *b],
        [.., a, b] => [*a, *b],
    };
    false
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.phase != (Phase::AfterHead { written: false }) {
                    this.saw(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.overdue(cx) {
                Overdue::No => Poll::Pending,
                Overdue::Silent => Poll::Ready(Ok(())),
                Overdue::Head(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if this.phase == (Phase::AfterHead { written: false }) {
            this.phase = Phase::AfterHead { written: true };
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if this.phase == (Phase::AfterHead { written: false }) {
            this.phase = Phase::AfterHead { written: true };
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> Option<usize> {
        let mut last = [0; 2];
        let mut begun = false;
        chunks
            .iter()
            .position(|c| head_ends(&mut last, &mut begun, c))
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_reads_cut_it() {
        let head = b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 1..head.len() {
            let (a, b) = head.split_at(cut);
            assert_eq!(ends(&[a, b]), Some(1), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(ends(&bytes), Some(head.len() - 1), "a byte per read");
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\n", b"\r\n"]), Some(1));
    }

    #[test]
    fn empty_lines_before_a_request_and_a_partial_head_do_not_end_it() {
        assert_eq!(ends(&[b"\r\n\r\n", b"\n\n"]), None);
        assert_eq!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n", b"Host: a\r\n"]), None);
        assert_eq!(ends(&[b"\r\nGET / HTTP/1.1\r\n\r\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nX: a\rb\r\n"]), None);
    }
}
