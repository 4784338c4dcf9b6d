//! The Pingora peer of an upstream endpoint.
//!
//! [`UpstreamPeer`] is Pingora's `HttpPeer` in every respect but one: a pooled connection
//! is reused without asking the kernel who is at the other end (`getpeername`) each time.
//! Pingora does that check to catch a pooled socket whose file descriptor was closed and
//! reused for another peer; its pool owns the sockets it keeps, so that cannot happen to
//! them, and the check costs a system call on every request.

use std::fmt;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::{HttpPeer, Peer, PeerOptions, Proxy, Tracer};
use pingora_core::utils::tls::CertKey;

#[derive(Clone)]
pub struct UpstreamPeer(pub HttpPeer);

impl fmt::Display for UpstreamPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Peer for UpstreamPeer {
    fn address(&self) -> &SocketAddr {
        self.0.address()
    }

    fn tls(&self) -> bool {
        self.0.tls()
    }

    fn sni(&self) -> &str {
        self.0.sni()
    }

    fn reuse_hash(&self) -> u64 {
        self.0.reuse_hash()
    }

    fn get_peer_options(&self) -> Option<&PeerOptions> {
        self.0.get_peer_options()
    }

    fn get_mut_peer_options(&mut self) -> Option<&mut PeerOptions> {
        self.0.get_mut_peer_options()
    }

    fn get_proxy(&self) -> Option<&Proxy> {
        self.0.get_proxy()
    }

    fn get_ca(&self) -> Option<&Arc<CaType>> {
        self.0.get_ca()
    }

    fn get_client_cert_key(&self) -> Option<&Arc<CertKey>> {
        self.0.get_client_cert_key()
    }

    fn get_tracer(&self) -> Option<Tracer> {
        self.0.get_tracer()
    }

    /// See the module doc: the pool's own sockets need no check.
    fn matches_fd<V: AsRawFd>(&self, _fd: V) -> bool {
        true
    }
}
