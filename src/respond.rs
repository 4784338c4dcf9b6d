//! Writing the gateway's own responses (errors, model lists, mock answers) to the client.
//! Every response carries `x-request-id`.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::adapters::Wire;
use crate::error::GatewayError;

pub type WriteResult = pingora_error::Result<()>;

/// A response header with `x-request-id` and the given content type.
pub fn header(
    status: u16,
    content_type: &str,
    request_id: &str,
) -> pingora_error::Result<ResponseHeader> {
    // No map of name case, as for proxied responses (`forward::client_response_header`).
    let mut h = ResponseHeader::build_no_case(status, Some(4))?;
    h.insert_header("content-type", content_type)?;
    h.insert_header("x-request-id", request_id)?;
    Ok(h)
}

/// A complete JSON response.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
) -> WriteResult {
    json_with(session, status, body, request_id, &[]).await
}

/// A complete JSON response with `extra` headers.
pub async fn json_with(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> WriteResult {
    let mut h = header(status, "application/json", request_id)?;
    h.insert_header("content-length", body.len().to_string())?;
    for (name, value) in extra {
        h.insert_header(*name, value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The error response for `e`, shaped as the client's `wire` (OpenAI's, or Anthropic's
/// on `/v1/messages`).
pub async fn error(
    session: &mut Session,
    e: &GatewayError,
    request_id: &str,
    wire: Wire,
) -> WriteResult {
    let mut h = header(e.status(), "application/json", request_id)?;
    let body = wire.error_body(e);
    h.insert_header("content-length", body.len().to_string())?;
    for (name, value) in e.headers() {
        h.insert_header(*name, value.as_str())?;
    }
    if let GatewayError::MethodNotAllowed { path, .. } = e {
        let allow = if path.starts_with("/v1/models") || !path.starts_with("/v1/") {
            "GET, HEAD"
        } else {
            "POST"
        };
        h.insert_header("allow", allow)?;
    }
    if !session.as_downstream_mut().is_body_done() {
        // The rest of the body (maybe huge, maybe never coming) is not read: close the
        // connection rather than drain it for the next request.
        h.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Starts a `text/event-stream` response with `extra` headers.
pub async fn sse_start(
    session: &mut Session,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> WriteResult {
    let mut h = header(200, "text/event-stream", request_id)?;
    h.insert_header("cache-control", "no-cache")?;
    for (name, value) in extra {
        h.insert_header(*name, value.as_str())?;
    }
    frame_open_ended_body(session, &mut h)?;
    session.write_response_header(Box::new(h), false).await
}

/// A body of unknown length (a stream) must be chunked for an HTTP/1.1 client: without
/// `Content-Length` or chunking, its end could only be signalled by closing the
/// connection. HTTP/2 frames bodies itself; HTTP/1.0 knows no chunking.
pub fn frame_open_ended_body(session: &Session, h: &mut ResponseHeader) -> WriteResult {
    let sized = h.headers.contains_key(http::header::CONTENT_LENGTH);
    let http11 = session.req_header().version == http::Version::HTTP_11;
    if !sized && http11 && !session.as_downstream().is_http2() {
        h.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// One SSE event: `data: {payload}\n\n`, written (and so flushed) on its own.
pub async fn sse_event(session: &mut Session, payload: &[u8]) -> WriteResult {
    let mut event = Vec::with_capacity(payload.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(payload);
    event.extend_from_slice(b"\n\n");
    session
        .write_response_body(Some(Bytes::from(event)), false)
        .await
}

/// `data: [DONE]` and the end of the response.
pub async fn sse_done(session: &mut Session) -> WriteResult {
    session
        .write_response_body(Some(Bytes::from_static(b"data: [DONE]\n\n")), true)
        .await
}
