//! The gateway's HTTP application on Pingora's server: for each request on a downstream
//! connection, read its head, hand it whole to `handler` (which writes every response
//! itself), record its metrics and access-log line, and give the connection back for the
//! next request.
//!
//! This is Pingora's `HttpServerApp`, not `pingora_proxy`'s `ProxyHttp`: the gateway uses
//! none of the proxy's phases, cache or modules, and the proxy's per-request future (all
//! of its phases in one state machine) was copied into a box for every request and held
//! for every open stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::upstream::Connector;
use arc_swap::ArcSwap;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;

use crate::handler::{self, RequestCtx};
use crate::state::State;

/// The downstream session a request is handled on.
pub type Session = ServerSession;

pub struct Gateway {
    state: Arc<ArcSwap<State>>,
    connector: Connector,
    options: HttpServerOptions,
}

impl Gateway {
    pub fn new(state: Arc<ArcSwap<State>>, connector: Connector) -> Self {
        let mut options = HttpServerOptions::default();
        // h2 connections: the same idle bound as kept-alive HTTP/1 ones (set per response).
        options.h2_idle_timeout = Some(state.load().config.limits.idle_timeout);
        Gateway {
            state,
            connector,
            options,
        }
    }

    /// Handles the request whose head was read, then records it: metrics, the access-log
    /// line, and how long the connection may stay open for the next one.
    async fn serve(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) {
        if *shutdown.borrow() {
            // Shutting down: this is the connection's last request.
            session.set_keepalive(None);
        }
        let state = self.state.load_full();
        let mut ctx = RequestCtx::new();
        handler::handle(&state, &self.connector, session, &mut ctx).await;

        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let per_key = state
            .config
            .admin
            .as_ref()
            .is_some_and(|a| a.per_key_metrics);
        crate::request_metrics::record(&ctx, status, per_key);
        crate::access_log::write(session, &ctx);
        keep_alive_for(session, state.config.limits.idle_timeout);
    }
}

impl HttpServerApp for Gateway {
    // Written out rather than as an `#[async_trait]` `async fn`, which would move the
    // session from the future's argument into a local of its body: the future, held for
    // as long as a stream is open, would carry both copies (680 bytes each).
    fn process_new_http<'app, 'watch, 'fut>(
        self: &'app Arc<Self>,
        mut session: ServerSession,
        shutdown: &'watch ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'fut>>
    where
        'app: 'fut,
        'watch: 'fut,
        Self: 'fut,
    {
        Box::pin(async move {
            if !read_head(&mut session, shutdown).await {
                return None;
            }
            // What the request holds is let go when `serve` returns, before finishing the
            // connection, which may wait on the client (draining an unread body).
            self.serve(&mut session, shutdown).await;
            let settings = HttpPersistentSettings::for_session(&session);
            let reusable = session.finish().await.ok().flatten()?;
            Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
        })
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// Reads the next request head; false when there is none to handle: the connection
/// closed or broke, the server is shutting down while it waited, or the head was not
/// HTTP (answered 400) or a `CONNECT` (answered 405), after which the connection closes.
async fn read_head(session: &mut ServerSession, shutdown: &ShutdownWatch) -> bool {
    let mut shutdown = shutdown.clone();
    let read = tokio::select! {
        // A request already buffered is served, even when shutdown has begun.
        biased;
        read = session.read_request() => read,
        _ = shutdown.wait_for(|down| *down) => return false,
    };
    let refuse = match read {
        Ok(true) if session.req_header().method == http::Method::CONNECT => 405,
        Ok(true) => return true,
        Ok(false) => return false,
        Err(e) if e.etype == ErrorType::InvalidHTTPHeader => {
            tracing::debug!(error = %e, "Unreadable request head");
            400
        }
        Err(e) => {
            tracing::debug!(error = %e, "Reading a request head failed");
            session.shutdown().await;
            return false;
        }
    };
    if let Err(e) = session.respond_error(refuse).await {
        tracing::debug!(error = %e, "Answering an unreadable request failed");
    }
    session.shutdown().await;
    false
}

/// Bounds how long a kept-alive HTTP/1 connection may wait for its next request (Pingora
/// waits forever once a response was sent); a connection that is to close stays so.
fn keep_alive_for(session: &mut ServerSession, idle: std::time::Duration) {
    let secs = idle.as_secs().max(1);
    match session.get_keepalive() {
        Some(current) if current == 0 || current > secs => session.set_keepalive(Some(secs)),
        _ => {}
    }
}
