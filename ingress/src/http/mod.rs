//! HTTP/1.1 framing: request heads parsed with `httparse`, bodies by `Content-Length`,
//! responses written with explicit lengths so connections can be kept alive and pipelined.
//!
//! Limits are enforced while bytes arrive: a head larger than `header_max` is refused with 431
//! before it is complete, a `Content-Length` above `body_max` with 413 before the body is read.
//! Chunked request bodies are not accepted (501): every API body is a small JSON object.
//!
//! Framing follows RFC 9112, sections 6.1 and 6.3, strictly: a request whose body length is
//! not stated exactly once, as plain digits, is refused with 400 and its connection closed.
//! Behind a proxy that frames the same bytes differently, any leniency here would let one
//! client's body be read as another request (request smuggling), so nothing is guessed.
//!
//! A client that sends `Expect: 100-continue` (curl does for bodies over 1 KiB) waits for an
//! interim `100 Continue` before its body, or gives up waiting after a second. The framer says
//! when such a client is waiting ([`Framed::ExpectsContinue`]) so the connection can write
//! [`CONTINUE`] once; a declared body over the limit is refused with 413 before that, at once.

pub mod api;
pub mod host;
pub mod listing;
pub mod views;

/// Most headers accepted in one request.
pub const HEADERS_MAX: usize = 32;

/// Size limits for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line plus headers), in bytes.
    pub header_max: usize,
    /// Largest request body, in bytes.
    pub body_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_max: 8 * 1024, body_max: 16 * 1024 }
    }
}

/// Why a request could not be framed. After any of these the connection is closed, because
/// where the next request starts is no longer known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head exceeds the limit.
    #[error("request head exceeds {0} bytes")]
    HeadersTooLarge(usize),
    /// More headers than [`HEADERS_MAX`].
    #[error("more than {HEADERS_MAX} headers")]
    TooManyHeaders,
    /// The body exceeds the limit.
    #[error("request body of {length} bytes exceeds {max} bytes")]
    BodyTooLarge {
        /// Announced length.
        length: u64,
        /// Largest accepted.
        max: usize,
    },
    /// `Transfer-Encoding` bodies are not accepted.
    #[error("Transfer-Encoding is not supported; send the body with Content-Length")]
    TransferEncoding,
    /// More than one `Content-Length` field line, or one whose value is a list.
    #[error("more than one Content-Length; send exactly one Content-Length header with one value")]
    DuplicateContentLength,
    /// A `Content-Length` that is not 1*DIGIT, or too large for a `u64`. Holds the value as
    /// received, quoted and cut short.
    #[error("Content-Length {0} is not a length; send the body's length in bytes as plain digits")]
    InvalidContentLength(String),
    /// An HTTP/1.1 request with no `Host` field, or more than one (how many).
    #[error("an HTTP/1.1 request carries exactly one Host header; this one has {0}")]
    Host(u8),
    /// `Transfer-Encoding` and `Content-Length` together: the two framings could disagree.
    #[error("both Transfer-Encoding and Content-Length; send the body with Content-Length alone")]
    TransferEncodingWithContentLength,
}

impl HttpError {
    /// Status and snake_case code of the error response.
    #[must_use]
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            HttpError::Malformed(_) => (400, "malformed_request"),
            HttpError::HeadersTooLarge(_) | HttpError::TooManyHeaders => (431, "headers_too_large"),
            HttpError::BodyTooLarge { .. } => (413, "body_too_large"),
            HttpError::TransferEncoding => (501, "transfer_encoding_not_supported"),
            HttpError::DuplicateContentLength => (400, "duplicate_content_length"),
            HttpError::InvalidContentLength(_) => (400, "invalid_content_length"),
            HttpError::Host(_) => (400, "invalid_host"),
            HttpError::TransferEncodingWithContentLength => {
                (400, "transfer_encoding_with_content_length")
            }
        }
    }
}

/// One framed request, borrowed from the connection's receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The request target without the query string.
    pub path: &'a str,
    /// The query string (after `?`), empty when there is none.
    pub query: &'a str,
    /// The bearer token from `Authorization: Bearer ...`, if any.
    pub bearer: Option<&'a [u8]>,
    /// The `Host` field's value; `None` only on an HTTP/1.0 request without one.
    pub host: Option<&'a [u8]>,
    /// An `Origin` field was sent: the request comes from a web page (browsers send it with
    /// every cross-origin request and every `POST`; services do not).
    pub from_web_page: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The body (`Content-Length` bytes).
    pub body: &'a [u8],
}

/// The interim response that tells a client waiting on `Expect: 100-continue` to send its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the bytes at the front of a receive buffer hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// More bytes are needed.
    Partial,
    /// A complete head with `Expect: 100-continue` and a body within the limit, none of which
    /// has arrived: the client waits for [`CONTINUE`] before sending it.
    ExpectsContinue,
    /// A whole request and the number of bytes it occupied.
    Complete(Request<'a>, usize),
}

/// Frames the next request in `buffer`. `Ok(None)` means more bytes are needed; on `Ok(Some)`
/// the second value is the number of bytes the request occupied.
pub fn try_request(
    buffer: &[u8],
    limits: Limits,
) -> Result<Option<(Request<'_>, usize)>, HttpError> {
    match try_frame(buffer, limits)? {
        Framed::Partial | Framed::ExpectsContinue => Ok(None),
        Framed::Complete(request, used) => Ok(Some((request, used))),
    }
}

/// Frames the next request in `buffer`, telling apart a client that waits for `100 Continue`
/// from one whose bytes are still on their way.
pub fn try_frame(buffer: &[u8], limits: Limits) -> Result<Framed<'_>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buffer.len() > limits.header_max {
                return Err(HttpError::HeadersTooLarge(limits.header_max));
            }
            return Ok(Framed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(error) => return Err(HttpError::Malformed(error.to_string())),
    };
    if head_len > limits.header_max {
        return Err(HttpError::HeadersTooLarge(limits.header_max));
    }
    let method = parsed.method.unwrap_or_default();
    let target = origin_form(parsed.path.unwrap_or_default());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let http_10 = parsed.version == Some(0);
    let mut head = Head {
        keep_alive: !http_10,
        content_length: None,
        transfer_encoding: false,
        bearer: None,
        from_web_page: false,
        expects_continue: false,
        hosts: 0,
        host: None,
    };
    for header in parsed.headers.iter() {
        read_header(&mut head, header, http_10)?;
    }
    // RFC 9112, section 3.2: an HTTP/1.1 request carries exactly one Host.
    if !http_10 && head.hosts != 1 {
        return Err(HttpError::Host(head.hosts));
    }
    let content_length = body_length(&head)?;
    if content_length > limits.body_max as u64 {
        return Err(HttpError::BodyTooLarge { length: content_length, max: limits.body_max });
    }
    // Lossless: the length is at most `body_max`, a `usize`.
    let total = head_len + content_length as usize;
    if buffer.len() < total {
        // Once any of the body has arrived the client is sending it and waits for nothing.
        if head.expects_continue && buffer.len() == head_len {
            return Ok(Framed::ExpectsContinue);
        }
        return Ok(Framed::Partial);
    }
    let request = Request {
        method,
        path,
        query,
        bearer: head.bearer,
        host: head.host,
        from_web_page: head.from_web_page,
        keep_alive: head.keep_alive,
        body: &buffer[head_len..total],
    };
    Ok(Framed::Complete(request, total))
}

struct Head<'a> {
    keep_alive: bool,
    /// The one `Content-Length`; a second is refused as it is read.
    content_length: Option<u64>,
    /// A `Transfer-Encoding` field line was present, whatever its value.
    transfer_encoding: bool,
    bearer: Option<&'a [u8]>,
    from_web_page: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request; HTTP/1.0 clients cannot be sent the
    /// interim response, so the expectation is ignored for them (RFC 9110, section 10.1.1).
    expects_continue: bool,
    /// `Host` field lines seen (saturating).
    hosts: u8,
    /// The first `Host` field's value.
    host: Option<&'a [u8]>,
}

fn read_header<'a>(
    head: &mut Head<'a>,
    header: &httparse::Header<'a>,
    http_10: bool,
) -> Result<(), HttpError> {
    let name = header.name;
    if name.eq_ignore_ascii_case("content-length") {
        // Strict on purpose: RFC 9112 (section 6.3) lets a recipient accept repeated lines
        // with one identical value, but a proxy in front may have framed by another of them,
        // or refused the request while we serve it. A second line is refused even when equal.
        if head.content_length.is_some() {
            return Err(HttpError::DuplicateContentLength);
        }
        head.content_length = Some(parse_content_length(header.value)?);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        head.transfer_encoding = true;
    } else if name.eq_ignore_ascii_case("connection") {
        // A comma-separated list of options (RFC 9110 section 7.6.1): `TE, close` closes.
        for option in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if option.eq_ignore_ascii_case(b"close") {
                head.keep_alive = false;
            } else if http_10 && option.eq_ignore_ascii_case(b"keep-alive") {
                head.keep_alive = true;
            }
        }
    } else if name.eq_ignore_ascii_case("expect") {
        head.expects_continue =
            !http_10 && header.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
    } else if name.eq_ignore_ascii_case("origin") {
        head.from_web_page = true;
    } else if name.eq_ignore_ascii_case("host") {
        head.hosts = head.hosts.saturating_add(1);
        head.host = head.host.or(Some(header.value));
    } else if name.eq_ignore_ascii_case("authorization") {
        let value = header.value;
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            head.bearer = Some(value[7..].trim_ascii());
        }
    }
    Ok(())
}

/// The path and query of a request target: an absolute-form target
/// (`http://host:port/path?query`, which a server must accept: RFC 9112, section 3.2.2) loses
/// its scheme and authority; an origin-form one (`/path?query`) is returned as it is.
fn origin_form(target: &str) -> &str {
    let scheme = ["http://", "https://"].into_iter().find(|prefix| {
        target.get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    });
    let Some(scheme) = scheme else { return target };
    let rest = &target[scheme.len()..];
    // The authority ends where the path starts; with no path, the path is `/`.
    match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'/' => &rest[at..],
        _ => "/",
    }
}

/// The body length the head declares, once every header has been read: a `Transfer-Encoding`
/// is refused, with 400 when a `Content-Length` says otherwise (RFC 9112, section 6.1), and
/// no `Content-Length` means no body.
fn body_length(head: &Head<'_>) -> Result<u64, HttpError> {
    match (head.transfer_encoding, head.content_length) {
        (true, Some(_)) => Err(HttpError::TransferEncodingWithContentLength),
        (true, None) => Err(HttpError::TransferEncoding),
        (false, length) => Ok(length.unwrap_or(0)),
    }
}

/// Longest piece of a refused `Content-Length` value quoted back, so a hostile value cannot
/// fill the log line or the response.
const CONTENT_LENGTH_QUOTED_MAX: usize = 24;

/// Reads a `Content-Length` value as `1*DIGIT` (RFC 9112, section 6.3): no sign, no inner
/// space, no hex, not empty, not beyond `u64::MAX`. Leading zeros are digits and are allowed.
/// The value arrives without surrounding whitespace (httparse strips it, as RFC 9110 says).
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    // A list is the same field as that many lines (RFC 9110, section 5.3), so `5, 5` is
    // refused as a duplicate, not as a bad number.
    if value.contains(&b',') {
        return Err(HttpError::DuplicateContentLength);
    }
    let invalid = || {
        let shown = &value[..value.len().min(CONTENT_LENGTH_QUOTED_MAX)];
        let cut = if shown.len() < value.len() { "..." } else { "" };
        HttpError::InvalidContentLength(format!("{:?}{cut}", String::from_utf8_lossy(shown)))
    };
    if value.is_empty() {
        return Err(invalid());
    }
    let mut length: u64 = 0;
    for &byte in value {
        if !byte.is_ascii_digit() {
            return Err(invalid());
        }
        let digit = u64::from(byte - b'0');
        length = length.checked_mul(10).and_then(|l| l.checked_add(digit)).ok_or_else(invalid)?;
    }
    Ok(length)
}

/// A response ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// `Retry-After` in seconds, for 429 and 503.
    pub retry_after_s: Option<u32>,
    /// `Allow`: the methods the target accepts, for 405.
    pub allow: Option<&'static str>,
}

impl Response {
    /// A JSON response.
    #[must_use]
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::body(status, body)
    }

    /// A JSON response from any of the API's views ([`views`]).
    #[must_use]
    pub fn body<T: serde::Serialize + ?Sized>(status: u16, body: &T) -> Response {
        let mut bytes = serde_json::to_vec(body).expect("the API's views always serialize");
        bytes.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body: bytes,
            retry_after_s: None,
            allow: None,
        }
    }

    /// The API's error shape: `{"error": code, "message": message}`.
    #[must_use]
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": code, "message": message }))
    }

    /// An error naming more than its code and message (e.g. the field at fault).
    #[must_use]
    pub fn error_json(status: u16, error: &views::ErrorJson) -> Response {
        Response::body(status, error)
    }

    /// Adds a `Retry-After` header.
    #[must_use]
    pub fn retry_after(mut self, seconds: u32) -> Response {
        self.retry_after_s = Some(seconds);
        self
    }

    /// Adds an `Allow` header naming the methods the target accepts.
    #[must_use]
    pub fn allow(mut self, methods: &'static str) -> Response {
        self.allow = Some(methods);
        self
    }

    /// Appends the response, head and body, to `out`.
    pub fn write(&self, out: &mut Vec<u8>, keep_alive: bool) {
        self.write_for(out, keep_alive, false);
    }

    /// Appends the response to `out`; for a `HEAD` request (`head_only`) without its body, the
    /// `content-length` still the body's (RFC 9110, section 9.3.2).
    pub fn write_for(&self, out: &mut Vec<u8>, keep_alive: bool, head_only: bool) {
        use std::io::Write as _;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(seconds) = self.retry_after_s {
            let _ = write!(out, "retry-after: {seconds}\r\n");
        }
        if let Some(methods) = self.allow {
            let _ = write!(out, "allow: {methods}\r\n");
        }
        if self.status == 401 {
            out.extend_from_slice(b"www-authenticate: Bearer\r\n");
        }
        let connection: &[u8] = if keep_alive { b"keep-alive" } else { b"close" };
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(connection);
        out.extend_from_slice(b"\r\n\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests;
