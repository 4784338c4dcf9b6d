//! `bench-pingora-floor`: the least a Pingora 0.9 reverse proxy does per request, run by
//! the load harness beside nginx and tollgate. Pingora's own proxy loop forwards each
//! request to the upstream of the port it arrived on, over pooled keep-alive connections,
//! and, like the nginx under test, replaces the client's `Authorization` with the
//! upstream's. No body parsing, no policy, no metrics, no access log: what tollgate costs
//! above this is tollgate's own, what this costs above nginx is the framework's.
//!
//!   bench-pingora-floor --route 127.0.0.1:19251=127.0.0.1:19101 [--route ...]

use std::collections::HashMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora_core::listeners::ListenerConfig;
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};
use tollgate_bench::{floor_server, parse_route};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// `LISTEN=UPSTREAM`: requests arriving on LISTEN go to UPSTREAM (repeatable).
    #[arg(long = "route", value_parser = parse_route, required = true)]
    routes: Vec<(SocketAddr, SocketAddr)>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Credential sent upstream in place of the client's.
    #[arg(long, default_value = "bench-upstream-key")]
    upstream_key: String,
    /// Read buffer of each client connection (Pingora's default: 64 KiB; tollgate: 0).
    #[arg(long, default_value_t = 0)]
    l4_read_buffer: usize,
}

struct Floor {
    /// Upstream by the local port a request arrived on.
    upstreams: HashMap<u16, SocketAddr>,
    authorization: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    /// None, as tollgate: Pingora's default is a disabled compression module that still
    /// runs on every response.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        let upstream = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|a| self.upstreams.get(&a.port()))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route for this port"))?;
        Ok(Box::new(HttpPeer::new(*upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> pingora_error::Result<()> {
        request.insert_header("authorization", self.authorization.as_str())
    }
}

fn main() {
    let args = Args::parse();
    let mut server = floor_server("bench-pingora-floor", args.routes[0].0.port(), args.threads);
    let floor = Floor {
        upstreams: args.routes.iter().map(|(l, u)| (l.port(), *u)).collect(),
        authorization: format!("Bearer {}", args.upstream_key),
    };
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, floor);
    for (listen, _) in &args.routes {
        let buffers = L4BufferSettings::default().read(args.l4_read_buffer);
        service.add_listener(ListenerConfig::tcp(listen.to_string()).l4_buffer(buffers));
    }
    server.add_service(service);
    server.run_forever();
}
