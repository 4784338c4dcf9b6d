//! Just enough HTTP/1.1 for the mock upstream: reading requests (Content-Length and
//! chunked bodies, `Expect: 100-continue`, keep-alive) and writing responses, full or
//! chunked, while watching for the peer hanging up.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted; anything bigger is a broken test.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A request as read off the wire.
#[derive(Debug)]
pub struct WireRequest {
    pub method: String,
    pub path: String,
    pub version: String,
    /// Names lowercased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl WireRequest {
    /// The gateway's active health check, which mocks answer apart.
    pub fn is_health_probe(&self) -> bool {
        self.header("user-agent")
            .is_some_and(|ua| ua.starts_with("tollgate-health-check"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// Whether the connection may serve another request after this one.
    pub fn wants_keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }
}

/// First value of header `name` (any case) in a lowercase-named list.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// What the peer did while we waited.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Peer {
    Open,
    Closed,
}

/// One server-side connection: the stream plus bytes read but not yet consumed.
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next request, or None if the peer closed cleanly between requests.
    pub async fn read_request(&mut self) -> io::Result<Option<WireRequest>> {
        let Some(head) = self.read_head().await? else {
            return Ok(None);
        };
        let mut request = parse_head(&head)?;
        if request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        request.body = self.read_body(&request).await?;
        Ok(Some(request))
    }

    /// Bytes of the head up to and including the blank line.
    async fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..end + 4).collect()));
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid("request head too large"));
            }
            if self.fill().await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(eof("inside request head")),
                };
            }
        }
    }

    async fn read_body(&mut self, request: &WireRequest) -> io::Result<Vec<u8>> {
        let chunked = request
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return self.read_chunked_body().await;
        }
        match request.header("content-length") {
            Some(len) => {
                let len = len.parse().map_err(|_| invalid("bad content-length"))?;
                self.read_exact_bytes(len).await
            }
            None => Ok(Vec::new()),
        }
    }

    async fn read_chunked_body(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact_bytes(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }

    /// One line without its CRLF.
    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return String::from_utf8(line).map_err(|_| invalid("non-UTF-8 line"));
            }
            if self.fill().await? == 0 {
                return Err(eof("inside chunked body"));
            }
        }
    }

    async fn read_exact_bytes(&mut self, len: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(eof("inside request body"));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Writes and flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Sleeps for `duration` while reading, so that a peer hanging up is noticed at once.
    /// Bytes that arrive meanwhile are kept for the next request.
    pub async fn pause_watching_peer(&mut self, duration: Duration) -> Peer {
        if duration.is_zero() {
            return Peer::Open;
        }
        let sleep = tokio::time::sleep(duration);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Peer::Open,
                read = self.fill() => match read {
                    Ok(0) | Err(_) => return Peer::Closed,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Best-effort close (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

fn parse_head(head: &[u8]) -> io::Result<WireRequest> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("bad request line"));
    };
    let headers = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid("bad header line"))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect::<io::Result<_>>()?;
    Ok(WireRequest {
        method: method.to_string(),
        path: path.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    })
}

/// `HTTP/1.1 {status} {reason}` plus headers and the blank line.
pub fn response_head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One chunk of a chunked body (must not be empty: that would end the body).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn eof(where_: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {where_}"),
    )
}
