//! The Pingora service. Each phase delegates: the request is handled whole in
//! `request_filter` (see `handler`), and `logging` writes the access log line.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_proxy::{ProxyHttp, Session};

use crate::handler::{self, RequestCtx};
use crate::state::State;

pub struct Gateway {
    state: Arc<ArcSwap<State>>,
    connector: Connector,
}

impl Gateway {
    pub fn new(state: Arc<ArcSwap<State>>, connector: Connector) -> Self {
        Gateway { state, connector }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// None: the gateway writes every response itself and compresses none, and Pingora's
    /// default (a compression module, disabled) would still be set up for every request and
    /// run on every write.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<bool> {
        let state = self.state.load_full();
        handler::handle(&state, &self.connector, session, ctx).await;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        // Every request is answered in `request_filter`; Pingora's own proxy loop is not used.
        Error::e_explain(
            ErrorType::InternalError,
            "requests are answered in request_filter",
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let state = self.state.load();
        let per_key = state
            .config
            .admin
            .as_ref()
            .is_some_and(|a| a.per_key_metrics);
        crate::request_metrics::record(ctx, status, per_key);
        crate::access_log::write(session, e, ctx);
        keep_alive_for(session, state.config.limits.idle_timeout);
    }
}

/// Bounds how long a kept-alive HTTP/1 connection may wait for its next request (Pingora
/// waits forever once a response was sent); a connection that is to close stays so.
fn keep_alive_for(session: &mut Session, idle: std::time::Duration) {
    let secs = idle.as_secs().max(1);
    match session.get_keepalive() {
        Some(current) if current == 0 || current > secs => session.set_keepalive(Some(secs)),
        _ => {}
    }
}
