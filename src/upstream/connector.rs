//! Connections to upstream endpoints: Pingora's transport connector opens them (TCP, TLS),
//! and the gateway keeps the idle ones itself.
//!
//! Pingora's own pool gives every idle connection a task that watches it: releasing a
//! connection spawns one, and taking the connection back wakes that task and waits until
//! it lets go, a round trip through the scheduler on every request. Here an idle
//! connection is a socket in a list. Whether the upstream closed it while it sat idle is
//! asked when it is taken (one non-blocking read), and a sweep each second closes those
//! that timed out or that the upstream closed, so no socket lingers in `CLOSE_WAIT`.
//!
//! Connections are kept per [`Peer::reuse_hash`] (address, TLS settings, credentials of
//! the peer), at most `upstream_keepalive_pool_size` idle ones per peer, and handed out
//! newest first: the connections in use stay warm and the rest age out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::v1::client::HttpSession as Http1Session;
use pingora_core::upstreams::peer::Peer;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// How often idle connections are looked over.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle connections kept per peer when the server config does not say.
const DEFAULT_IDLE_PER_PEER: usize = 128;

pub struct Connector {
    transport: TransportConnector,
    idle: Arc<IdleConnections>,
    sweeper: std::sync::Once,
}

struct IdleConnections {
    by_peer: Mutex<HashMap<u64, VecDeque<Idle>>>,
    per_peer: usize,
}

struct Idle {
    stream: Stream,
    /// When the connection stops being worth keeping.
    expires: Instant,
}

impl Connector {
    pub fn new(options: Option<ConnectorOptions>) -> Self {
        let per_peer = options
            .as_ref()
            .map_or(DEFAULT_IDLE_PER_PEER, |o| o.keepalive_pool_size.max(1));
        Connector {
            transport: TransportConnector::new(options),
            idle: Arc::new(IdleConnections {
                by_peer: Mutex::new(HashMap::new()),
                per_peer,
            }),
            sweeper: std::sync::Once::new(),
        }
    }

    /// An HTTP/1 session to `peer`, on an idle connection if one is open (`true`), or on
    /// a new one.
    pub async fn get_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        peer: &P,
    ) -> pingora_error::Result<(HttpSession, bool)> {
        let (stream, reused) = match self.idle.take(peer.reuse_hash()) {
            Some(stream) => (stream, true),
            None => (self.transport.new_stream(peer).await?, false),
        };
        let session = Http1Session::new_with_options(stream, peer);
        Ok((HttpSession::H1(session), reused))
    }

    /// Keeps the session's connection for the next request to `peer` if its response was
    /// read to the end and both sides allow keep-alive; closes it otherwise.
    pub async fn release_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        session: HttpSession,
        peer: &P,
        idle_timeout: Duration,
    ) {
        let HttpSession::H1(mut session) = session else {
            return;
        };
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.start_sweeper();
            self.idle.put(peer.reuse_hash(), stream, idle_timeout);
        }
    }

    /// Idle connections held now, over all peers.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().values().map(VecDeque::len).sum()
    }

    /// Starts the sweep on the runtime of the first release (there is none yet when the
    /// connector is made). It ends when the connector is dropped.
    fn start_sweeper(&self) {
        self.sweeper.call_once(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep_loop(Arc::downgrade(&self.idle)));
            }
        });
    }
}

async fn sweep_loop(idle: Weak<IdleConnections>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        idle.sweep();
    }
}

impl IdleConnections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, VecDeque<Idle>>> {
        // A panic while the lock was held leaves at worst a list of sockets; keep going.
        self.by_peer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest idle connection to the peer that is still open. Stale ones met on the
    /// way are closed (outside the lock).
    fn take(&self, key: u64) -> Option<Stream> {
        loop {
            let mut idle = self.lock().get_mut(&key)?.pop_back()?;
            if idle.expires > Instant::now() && still_idle(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    fn put(&self, key: u64, stream: Stream, timeout: Duration) {
        let idle = Idle {
            stream,
            expires: Instant::now() + timeout,
        };
        let evicted = {
            let mut by_peer = self.lock();
            let list = by_peer.entry(key).or_default();
            list.push_back(idle);
            if list.len() > self.per_peer {
                list.pop_front()
            } else {
                None
            }
        };
        drop(evicted);
    }

    /// Closes the connections that expired or that the upstream closed or wrote to.
    fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut by_peer = self.lock();
            for list in by_peer.values_mut() {
                for mut c in std::mem::take(list) {
                    if c.expires > now && still_idle(&mut c.stream) {
                        list.push_back(c);
                    } else {
                        closed.push(c);
                    }
                }
            }
            by_peer.retain(|_, list| !list.is_empty());
        }
        drop(closed);
    }
}

/// Whether an idle connection is still open with nothing to read: the upstream has
/// neither closed it nor sent anything unasked (which would belong to no request).
fn still_idle(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::upstreams::peer::HttpPeer;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers every request on a connection with a small 200, and counts
    /// the connections it accepted; `close_after` ends each connection after that many
    /// answers. Returned as the peer to reach it.
    async fn server(close_after: usize) -> (HttpPeer, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..close_after {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = socket.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (HttpPeer::new(addr, false, String::new()), accepted)
    }

    /// A GET whose response is read to the end; whether its connection was reused.
    async fn get(connector: &Connector, peer: &HttpPeer) -> (HttpSession, bool) {
        let (mut session, reused) = connector.get_http_session(peer).await.unwrap();
        let mut req = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "test").unwrap();
        session.write_request_header(Box::new(req)).await.unwrap();
        session.read_response_header().await.unwrap();
        while session.read_response_body().await.unwrap().is_some() {}
        (session, reused)
    }

    /// [`get`], then the connection back to the connector.
    async fn exchange(connector: &Connector, peer: &HttpPeer) -> bool {
        let (session, reused) = get(connector, peer).await;
        connector
            .release_http_session(session, peer, Duration::from_secs(60))
            .await;
        reused
    }

    #[tokio::test]
    async fn a_released_connection_is_used_again() {
        let (peer, accepted) = server(usize::MAX).await;
        let connector = Connector::new(None);
        assert!(!exchange(&connector, &peer).await);
        assert_eq!(connector.idle_count(), 1);
        for _ in 0..5 {
            assert!(exchange(&connector, &peer).await);
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_handed_out() {
        // The server closes each connection after one answer.
        let (peer, accepted) = server(1).await;
        let connector = Connector::new(None);
        assert!(!exchange(&connector, &peer).await);
        // Let the close arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !exchange(&connector, &peer).await,
            "a closed connection was reused"
        );
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sweep_closes_what_the_upstream_closed_and_what_expired() {
        let (peer, _) = server(1).await;
        let connector = Connector::new(None);
        exchange(&connector, &peer).await;
        assert_eq!(connector.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        connector.idle.sweep();
        assert_eq!(connector.idle_count(), 0, "the closed connection was kept");

        let (peer, _) = server(usize::MAX).await;
        let (session, _) = get(&connector, &peer).await;
        connector
            .release_http_session(session, &peer, Duration::from_millis(10))
            .await;
        connector.idle.sweep();
        assert_eq!(
            connector.idle_count(),
            1,
            "an open connection was closed early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        connector.idle.sweep();
        assert_eq!(connector.idle_count(), 0, "an expired connection was kept");
    }

    #[tokio::test]
    async fn at_most_the_configured_number_stay_idle_per_peer() {
        let (peer, _) = server(usize::MAX).await;
        let options = ConnectorOptions {
            keepalive_pool_size: 2,
            ..ConnectorOptions::new(2)
        };
        let connector = Connector::new(Some(options));
        let mut sessions = Vec::new();
        for _ in 0..4 {
            sessions.push(get(&connector, &peer).await.0);
        }
        for session in sessions {
            connector
                .release_http_session(session, &peer, Duration::from_secs(60))
                .await;
        }
        assert_eq!(connector.idle_count(), 2);
    }
}
