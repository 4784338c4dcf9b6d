//! `bench-hyper-floor`: the least a reverse proxy built on hyper 1 (HTTP/1 server,
//! hyper-util's pooled keep-alive client, tokio) does per request. It answers what a
//! leaner HTTP/1 layer than Pingora's could cost: beside `bench-pingora-floor`, it is the
//! other candidate floor under the gateway. Like the nginx under test and the Pingora
//! floor, it replaces the client's `Authorization` with the upstream's and streams bodies
//! both ways without buffering them. No parsing, policy, metrics or access log.
//!
//! `--on-pingora` serves the same hyper HTTP/1 on connections a Pingora server accepts (its
//! listeners, runtimes and lifecycle, as a `ServerApp`): Pingora kept for the server, its
//! HTTP session and proxy loop replaced.
//!
//!   bench-hyper-floor --route 127.0.0.1:19251=127.0.0.1:19101 [--route ...] [--on-pingora]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::header::AUTHORIZATION;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate_bench::parse_route;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// `LISTEN=UPSTREAM`: requests arriving on LISTEN go to UPSTREAM (repeatable).
    #[arg(long = "route", value_parser = parse_route, required = true)]
    routes: Vec<(SocketAddr, SocketAddr)>,
    /// Accept connections with a Pingora server instead of a plain tokio runtime.
    #[arg(long)]
    on_pingora: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Credential sent upstream in place of the client's.
    #[arg(long, default_value = "bench-upstream-key")]
    upstream_key: String,
}

/// Forwards to one upstream.
struct Proxy {
    client: Client<HttpConnector, Incoming>,
    upstream: Authority,
    authorization: HeaderValue,
}

type Answer = Response<Either<Incoming, Empty<Bytes>>>;
type Failure = Box<dyn std::error::Error>;
/// Each listening address with the proxy to its upstream.
type Routes = Vec<(SocketAddr, Arc<Proxy>)>;

impl Proxy {
    async fn forward(&self, mut req: Request<Incoming>) -> Result<Answer, Infallible> {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.upstream.clone());
        let Ok(uri) = Uri::from_parts(parts) else {
            return Ok(status(StatusCode::BAD_REQUEST));
        };
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(AUTHORIZATION, self.authorization.clone());
        match self.client.request(req).await {
            Ok(response) => Ok(response.map(Either::Left)),
            Err(e) => {
                eprintln!("upstream: {e}");
                Ok(status(StatusCode::BAD_GATEWAY))
            }
        }
    }
}

fn status(code: StatusCode) -> Answer {
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = code;
    r
}

/// Serves HTTP/1 on `stream` until the client closes it.
async fn serve_connection<S>(proxy: Arc<Proxy>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { proxy.forward(req).await }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn proxies(args: &Args) -> Result<Routes, Failure> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let authorization = HeaderValue::try_from(format!("Bearer {}", args.upstream_key))?;
    args.routes
        .iter()
        .map(|(listen, upstream)| {
            let proxy = Proxy {
                client: client.clone(),
                upstream: Authority::try_from(upstream.to_string())?,
                authorization: authorization.clone(),
            };
            Ok((*listen, Arc::new(proxy)))
        })
        .collect()
}

fn main() -> Result<(), Failure> {
    let args = Args::parse();
    if args.on_pingora {
        on_pingora::run(&args)
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?;
        runtime.block_on(serve(&args))
    }
}

async fn serve(args: &Args) -> Result<(), Failure> {
    // The client's pool runs on this runtime, so it is made inside it.
    let mut accepting = tokio::task::JoinSet::new();
    for (listen, proxy) in proxies(args)? {
        let listener = TcpListener::bind(listen).await?;
        eprintln!("bench-hyper-floor: {listen} -> {}", proxy.upstream);
        accepting.spawn(accept(listener, proxy));
    }
    while accepting.join_next().await.is_some() {}
    Ok(())
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(proxy.clone(), stream));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Pingora's server, listeners and runtime; hyper's HTTP/1.
mod on_pingora {
    use std::collections::HashMap;
    use std::sync::Arc;

    use async_trait::async_trait;
    use pingora_core::apps::ServerApp;
    use pingora_core::listeners::ListenerConfig;
    use pingora_core::protocols::Stream;
    use pingora_core::protocols::l4::stream::L4BufferSettings;
    use pingora_core::server::ShutdownWatch;
    use pingora_core::services::listening::Service;
    use tollgate_bench::floor_server;

    use super::{Args, Failure, Proxy, proxies, serve_connection};

    /// One app for all listeners (one Pingora service, so one runtime, as the Pingora
    /// floor and tollgate have): the upstream is picked by the port a connection came to.
    struct HyperApp(HashMap<u16, Arc<Proxy>>);

    #[async_trait]
    impl ServerApp for HyperApp {
        async fn process_new(
            self: &Arc<Self>,
            stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            let port = stream
                .get_socket_digest()
                .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
            match port.and_then(|p| self.0.get(&p)) {
                Some(proxy) => serve_connection(proxy.clone(), stream).await,
                None => eprintln!("no route for port {port:?}"),
            }
            None
        }
    }

    pub fn run(args: &Args) -> Result<(), Failure> {
        let first = args.routes[0].0.port();
        let mut server = floor_server("bench-hyper-floor", first, args.threads);
        let routes = proxies(args)?;
        let app = HyperApp(routes.iter().map(|(l, p)| (l.port(), p.clone())).collect());
        let mut service = Service::new("hyper on pingora".to_owned(), app);
        for (listen, _) in &routes {
            // No read buffer under hyper's own (tollgate and the Pingora floor have none).
            let buffers = L4BufferSettings::default().read(0);
            service.add_listener(ListenerConfig::tcp(listen.to_string()).l4_buffer(buffers));
        }
        server.add_service(service);
        server.run_forever()
    }
}
