//! The headers the gateway writes on its responses and its upstream requests.
//!
//! They are built on `http`'s own header map and handed to Pingora whole
//! (`ResponseHeader::from(head)`). Pingora's `insert_header` turns each name back into
//! text and parses it again, copying a custom name twice; that was ~10K instructions per
//! request. The names here are constants, made when the gateway is compiled.
//!
//! No map of the names' case is kept: standard names go out title-cased
//! (`Content-Type`), others in lower case (`x-request-id`).

use http::{HeaderName, HeaderValue, StatusCode, response};
use pingora_http::ResponseHeader;

pub use tollgate_plugin::Header;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// The cache's verdict: `hit`, `miss`, `bypass` …
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The model that answered, after fallbacks.
pub const X_TOLLGATE_MODEL: HeaderName = HeaderName::from_static("x-tollgate-model");
pub const X_TOLLGATE_POOL: HeaderName = HeaderName::from_static("x-tollgate-pool");
pub const X_TOLLGATE_ENDPOINT: HeaderName = HeaderName::from_static("x-tollgate-endpoint");
/// Upstream attempts made (0 for a cache hit).
pub const X_TOLLGATE_ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");

/// A response head of `status`, with room for `capacity` more headers and the request's
/// `x-request-id`.
pub fn response(status: StatusCode, capacity: usize, request_id: &str) -> response::Parts {
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = status;
    head.headers.reserve(capacity + 1);
    if let Some(id) = text(request_id) {
        head.headers.insert(X_REQUEST_ID, id);
    }
    head
}

/// Text as a header value; `None` if it holds a byte no header value may (a control
/// character). The gateway's own values (ids, names from the config, numbers) never do.
pub fn text(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

/// `extra` added to `head`, each replacing any header of its name.
pub fn extend(head: &mut response::Parts, extra: &[Header]) {
    for (name, value) in extra {
        head.headers.insert(name, value.clone());
    }
}

/// The Pingora response header for `head`, ready to write.
pub fn finish(head: response::Parts) -> Box<ResponseHeader> {
    Box::new(ResponseHeader::from(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_carries_its_request_id_and_extras_replace_by_name() {
        let mut head = response(StatusCode::OK, 2, "req-1");
        head.headers
            .insert(X_TOLLGATE_ATTEMPTS, HeaderValue::from(2u32));
        extend(
            &mut head,
            &[
                (X_TOLLGATE_ATTEMPTS, HeaderValue::from(1u32)),
                (X_CACHE, HeaderValue::from_static("miss")),
            ],
        );
        let h = finish(head);
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-request-id"], "req-1");
        assert_eq!(h.headers.get_all("x-tollgate-attempts").iter().count(), 1);
        assert_eq!(h.headers["x-tollgate-attempts"], "1");
        assert_eq!(h.headers["x-cache"], "miss");
    }

    #[test]
    fn a_request_id_no_header_may_hold_is_left_out() {
        let head = response(StatusCode::OK, 0, "bad\nid");
        assert!(head.headers.get(X_REQUEST_ID).is_none());
        assert_eq!(
            text("tab\tok").as_ref().map(|v| v.as_bytes()),
            Some(&b"tab\tok"[..])
        );
    }
}
