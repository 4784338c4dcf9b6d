//! One exchange with an upstream endpoint: send the (rewritten) request, stream the
//! response back to the client as it arrives.
//!
//! The gateway reads the request body itself (to route on `model`), so it also drives the
//! upstream side itself, through Pingora's pooled connector, instead of Pingora's proxy
//! loop, whose body replay stops at 64 KiB. Bodies of any size up to the configured limit
//! take the same path.

use std::time::Duration;

use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tokio::time::Instant;

use super::{Endpoint, Pool};
use crate::error::GatewayError;
use crate::openai::Api;

/// How long an idle upstream connection stays in the pool.
const POOLED_IDLE: Duration = Duration::from_secs(60);

/// Hop-by-hop headers: they describe one connection and never cross the gateway.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// Client request headers never sent upstream besides [`HOP_BY_HOP`]: the client's own
/// credentials (the pool's replace them), headers the gateway sets itself, and account
/// headers that would not match the gateway's credential.
const DROP_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "expect",
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "x-request-id",
];

/// Upstream response headers never passed to the client besides [`HOP_BY_HOP`]: cookies
/// and account details of the gateway's credential, and the request id (the gateway's own
/// replaces it; the upstream's is kept as `x-upstream-request-id`).
const DROP_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "openai-organization",
    "openai-project",
    "x-request-id",
];

fn keeps(name: &str, dropped: &[&str]) -> bool {
    !HOP_BY_HOP.contains(&name) && !dropped.contains(&name)
}

/// What happened, for the access log.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// The endpoint URL that served (or failed) the request.
    pub endpoint: Option<String>,
    /// The upstream's status, once its header arrived.
    pub status: Option<u16>,
    /// The response header has gone to the client: errors can no longer change it.
    pub response_started: bool,
    /// The response is an SSE stream.
    pub event_stream: bool,
    /// The client went away before the response was complete; the upstream request was
    /// cancelled.
    pub client_gone: bool,
    pub response_bytes: u64,
}

/// Sends `body` to the pool's next endpoint and streams the answer to `session`.
pub async fn forward(
    connector: &Connector,
    session: &mut Session,
    pool: &Pool,
    api: Api,
    body: Bytes,
    request_id: &str,
    out: &mut Forwarded,
) -> Result<(), GatewayError> {
    let endpoint = pool
        .pick(&super::Hints::default(), &[])
        .map(|i| &pool.endpoints[i])
        .ok_or_else(|| {
            GatewayError::Internal(format!("pool `{}` has no endpoint", pool.spec.name))
        })?;
    out.endpoint = Some(endpoint.spec.url.clone());
    let t = pool.spec.timeouts;
    let deadline = Instant::now() + t.total;
    let unreachable = |detail: String| GatewayError::UpstreamUnreachable {
        pool: pool.spec.name.clone(),
        detail,
    };

    let addr = endpoint.addrs.pick().await.map_err(&unreachable)?;
    let peer = peer_for(pool, endpoint, addr);
    let mut request = Some(request_header(
        session.req_header(),
        endpoint,
        api,
        body.len(),
        request_id,
    )?);

    // A pooled connection may have been closed by the upstream while idle; that shows
    // only when it is used. Such a failure, before any response byte, is retried once
    // on a fresh connection.
    let mut upstream = None;
    for _ in 0..2 {
        let (mut conn, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| connect_error(pool, &e))?;
        let exchange = tokio::time::timeout(
            t.first_byte
                .min(deadline.saturating_duration_since(Instant::now())),
            // Only a reused connection may need a second try, and so its own copy.
            send_and_read_header(
                &mut conn,
                if reused {
                    request.clone()
                } else {
                    request.take()
                },
                body.clone(),
            ),
        );
        // A client that leaves while the upstream is still thinking cancels it too.
        let sent = tokio::select! {
            sent = exchange => sent,
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                out.client_gone = true;
                return Ok(());
            }
        };
        match sent {
            Ok(Ok(())) => {
                upstream = Some(conn);
                break;
            }
            Ok(Err(e)) if reused => {
                tracing::debug!(request_id, error = %e, "reused upstream connection failed; retrying on a new one");
            }
            Ok(Err(e)) => return Err(exchange_error(pool, &e, "sending the request")),
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    pool: pool.spec.name.clone(),
                    detail: format!("no response header within {:?}", t.first_byte),
                });
            }
        }
    }
    let Some(mut upstream) = upstream else {
        return Err(unreachable(
            "the connection failed twice before a response".into(),
        ));
    };
    let Some(upstream_header) = upstream.response_header() else {
        return Err(GatewayError::Internal(
            "response header missing after read".into(),
        ));
    };
    out.status = Some(upstream_header.status.as_u16());
    let (mut client_header, event_stream) = client_response_header(upstream_header, request_id)?;
    out.event_stream = event_stream;
    crate::respond::frame_open_ended_body(session, &mut client_header)
        .map_err(|e| GatewayError::Internal(format!("framing the response: {e}")))?;
    session
        .write_response_header(Box::new(client_header), false)
        .await
        .map_err(|e| {
            out.client_gone = true;
            GatewayError::BodyIncomplete(format!("client gone before the response: {e}"))
        })?;
    out.response_started = true;

    // Body: each upstream chunk goes to the client as soon as it is read. Meanwhile the
    // client connection is watched, so a client that leaves cancels the upstream request
    // at once (the upstream connection is dropped, not pooled).
    loop {
        let wait = t
            .idle
            .min(deadline.saturating_duration_since(Instant::now()));
        let read = tokio::select! {
            read = tokio::time::timeout(wait, upstream.read_response_body()) => read,
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                out.client_gone = true;
                return Ok(());
            }
        };
        match read {
            Err(_) => {
                let detail = if Instant::now() >= deadline {
                    format!("response not complete within {:?}", t.total)
                } else {
                    format!("no data for {:?}", t.idle)
                };
                return Err(GatewayError::UpstreamTimeout {
                    pool: pool.spec.name.clone(),
                    detail,
                });
            }
            Ok(Err(e)) => return Err(exchange_error(pool, &e, "reading the response body")),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                out.response_bytes += chunk.len() as u64;
                if let Err(e) = session.write_response_body(Some(chunk), false).await {
                    tracing::debug!(request_id, error = %e, "client gone mid-response");
                    out.client_gone = true;
                    return Ok(());
                }
                // With a Content-Length the client may hold the whole answer now and send
                // its next request at once: stop watching the connection before that.
                if upstream.response_done() {
                    break;
                }
            }
        }
    }
    if let Err(e) = session.write_response_body(None, true).await {
        tracing::debug!(request_id, error = %e, "client gone at the end of the response");
        out.client_gone = true;
        return Ok(());
    }
    if upstream.response_done() {
        connector
            .release_http_session(upstream, &peer, Some(POOLED_IDLE))
            .await;
    }
    Ok(())
}

async fn send_and_read_header(
    conn: &mut HttpSession,
    request: Option<RequestHeader>,
    body: Bytes,
) -> pingora_error::Result<()> {
    let request = request.ok_or_else(|| {
        pingora_error::Error::explain(ErrorType::InternalError, "upstream request already sent")
    })?;
    conn.write_request_header(Box::new(request)).await?;
    conn.write_request_body(body, true).await?;
    conn.finish_request_body().await?;
    conn.read_response_header().await
}

fn peer_for(pool: &Pool, endpoint: &Endpoint, addr: std::net::SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, endpoint.spec.tls, endpoint.spec.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(pool.spec.timeouts.connect);
    // Covers the TLS handshake too.
    o.total_connection_timeout = Some(pool.spec.timeouts.connect * 2);
    o.idle_timeout = Some(POOLED_IDLE);
    o.verify_cert = true;
    o.verify_hostname = true;
    o.ca = pool.ca.clone();
    peer
}

/// The upstream request line and headers: the client's headers minus those in
/// [`DROP_REQUEST_HEADERS`], plus the pool's host, credential and the request id.
fn request_header(
    client: &RequestHeader,
    endpoint: &Endpoint,
    api: Api,
    body_len: usize,
    request_id: &str,
) -> Result<RequestHeader, GatewayError> {
    let internal = |e: Box<pingora_error::Error>| {
        GatewayError::Internal(format!("building the upstream request: {e}"))
    };
    let spec = &endpoint.spec;
    let mut path = format!("{}{}", spec.base_path, api.path());
    if let Some(query) = client.uri.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut req = RequestHeader::build("POST", path.as_bytes(), Some(client.headers.len() + 4))
        .map_err(internal)?;
    for (name, value) in client.headers.iter() {
        if keeps(name.as_str(), DROP_REQUEST_HEADERS) {
            req.append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
    }
    let default_port = if spec.tls { 443 } else { 80 };
    let host = match (spec.host.contains(':'), spec.port == default_port) {
        (true, true) => format!("[{}]", spec.host),
        (true, false) => format!("[{}]:{}", spec.host, spec.port),
        (false, true) => spec.host.clone(),
        (false, false) => format!("{}:{}", spec.host, spec.port),
    };
    req.insert_header("host", host).map_err(internal)?;
    req.insert_header("content-type", "application/json")
        .map_err(internal)?;
    req.insert_header("content-length", body_len.to_string())
        .map_err(internal)?;
    req.insert_header("x-request-id", request_id)
        .map_err(internal)?;
    if let Some((_, key)) = endpoint.keys().pick() {
        req.insert_header("authorization", format!("Bearer {}", key.expose()))
            .map_err(internal)?;
    }
    Ok(req)
}

/// The client's response header from the upstream's; also says whether it is SSE.
fn client_response_header(
    upstream: &ResponseHeader,
    request_id: &str,
) -> Result<(ResponseHeader, bool), GatewayError> {
    let internal = |e: Box<pingora_error::Error>| {
        GatewayError::Internal(format!("building the response header: {e}"))
    };
    let mut h = ResponseHeader::build(upstream.status, Some(upstream.headers.len() + 2))
        .map_err(internal)?;
    for (name, value) in upstream.headers.iter() {
        if keeps(name.as_str(), DROP_RESPONSE_HEADERS) {
            h.append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
    }
    if let Some(id) = upstream.headers.get("x-request-id") {
        h.insert_header("x-upstream-request-id", id.clone())
            .map_err(internal)?;
    }
    h.insert_header("x-request-id", request_id)
        .map_err(internal)?;
    let event_stream = upstream
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    Ok((h, event_stream))
}

fn connect_error(pool: &Pool, e: &pingora_error::Error) -> GatewayError {
    let pool_name = pool.spec.name.clone();
    let detail = format!("connecting: {e}");
    match e.etype() {
        ErrorType::ConnectTimedout => GatewayError::UpstreamTimeout {
            pool: pool_name,
            detail,
        },
        _ => GatewayError::UpstreamUnreachable {
            pool: pool_name,
            detail,
        },
    }
}

fn exchange_error(pool: &Pool, e: &pingora_error::Error, doing: &str) -> GatewayError {
    let pool_name = pool.spec.name.clone();
    let detail = format!("{doing}: {e}");
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => GatewayError::UpstreamTimeout {
            pool: pool_name,
            detail,
        },
        ErrorType::ConnectionClosed
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::TLSHandshakeFailure => GatewayError::UpstreamUnreachable {
            pool: pool_name,
            detail,
        },
        _ => GatewayError::UpstreamProtocol {
            pool: pool_name,
            detail,
        },
    }
}
