//! Writing the gateway's own responses (errors, model lists, mock answers) to the client.
//! Every response carries `x-request-id`.

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use http::{HeaderValue, StatusCode, response};
use pingora_error::{ErrorType, OrErr};

use crate::adapters::Wire;
use crate::error::GatewayError;
use crate::gateway::Session;
use crate::headers::{self, Header};

pub type WriteResult = pingora_error::Result<()>;

/// A response head with `x-request-id`, the given content type and room for `capacity`
/// more headers.
pub fn head(
    status: u16,
    content_type: &'static str,
    request_id: &str,
    capacity: usize,
) -> pingora_error::Result<response::Parts> {
    let status = StatusCode::from_u16(status).explain_err(ErrorType::InvalidHTTPHeader, |_| {
        format!("invalid status {status}")
    })?;
    let mut h = headers::response(status, capacity + 1, request_id);
    h.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
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
    extra: &[Header],
) -> WriteResult {
    let mut h = head(status, "application/json", request_id, 1 + extra.len())?;
    h.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers::extend(&mut h, extra);
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(headers::finish(h)).await?;
    if !head_only {
        session.write_response_body(body, true).await?;
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
    let extra = e.headers();
    let mut h = head(e.status(), "application/json", request_id, 3 + extra.len())?;
    let body = wire.error_body(e);
    h.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers::extend(&mut h, extra);
    if let GatewayError::MethodNotAllowed { path, .. } = e {
        let allow = if path.starts_with("/v1/models") || !path.starts_with("/v1/") {
            "GET, HEAD"
        } else {
            "POST"
        };
        h.headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if !session.is_body_done() {
        // The rest of the body (maybe huge, maybe never coming) is not read: close the
        // connection rather than drain it for the next request.
        h.headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
        session.set_keepalive(None);
    }
    session.write_response_header(headers::finish(h)).await?;
    session.write_response_body(body, true).await
}

/// Starts a `text/event-stream` response with `extra` headers.
pub async fn sse_start(session: &mut Session, request_id: &str, extra: &[Header]) -> WriteResult {
    let mut h = head(200, "text/event-stream", request_id, 2 + extra.len())?;
    h.headers
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers::extend(&mut h, extra);
    frame_open_ended_body(session, &mut h);
    session.write_response_header(headers::finish(h)).await
}

/// A body of unknown length (a stream) must be chunked for an HTTP/1.1 client: without
/// `Content-Length` or chunking, its end could only be signalled by closing the
/// connection. HTTP/2 frames bodies itself; HTTP/1.0 knows no chunking.
pub fn frame_open_ended_body(session: &Session, h: &mut response::Parts) {
    let sized = h.headers.contains_key(CONTENT_LENGTH);
    let http11 = session.req_header().version == http::Version::HTTP_11;
    if !sized && http11 && !session.is_http2() {
        h.headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// One SSE event: `data: {payload}\n\n`, written (and so flushed) on its own.
pub async fn sse_event(session: &mut Session, payload: &[u8]) -> WriteResult {
    let mut event = Vec::with_capacity(payload.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(payload);
    event.extend_from_slice(b"\n\n");
    session.write_response_body(Bytes::from(event), false).await
}

/// `data: [DONE]` and the end of the response.
pub async fn sse_done(session: &mut Session) -> WriteResult {
    session
        .write_response_body(Bytes::from_static(b"data: [DONE]\n\n"), true)
        .await
}
