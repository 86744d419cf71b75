//! A client's request head: parsed with httparse, then held to RFC 9112's framing rules, more
//! strictly than the RFC requires where a proxy's safety depends on it (request smuggling).
use crate::proxy::headers::connection_has;
use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Request, Uri, Version};
use std::ops::Range;

/// Header lines accepted in one head (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// Header lines the proxy may add to a request on its way to the target.
const ADDED_HEADERS: usize = 6;

/// How the request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head, ready for the handler.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending its body.
    pub expect_continue: bool,
}

/// Why a head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// 431: over `proxy.maxHeaderBytes`, or more than [`MAX_HEADERS`] lines.
    #[error("request head too large")]
    TooLarge,
    /// 400.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// 501: a transfer coding tether does not decode.
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
}

/// Parses the head at the start of `buffer`: `Ok(None)` when it is incomplete (and still under
/// `max_bytes`), else the head and its length in bytes. The head's bytes are copied once.
pub fn parse(buffer: &[u8], max_bytes: usize) -> Result<Option<(Head, usize)>, HeadError> {
    let Some(lines) = scan(buffer, max_bytes)? else {
        return Ok(None);
    };
    let length = lines.length;
    let head = build(Bytes::copy_from_slice(&buffer[..length]), &lines)?;
    Ok(Some((head, length)))
}

/// [`parse`] for the connection's read buffer: a complete head is split off `buffer` and its
/// target and header values share that memory, so no field is copied.
pub fn parse_shared(buffer: &mut BytesMut, max_bytes: usize) -> Result<Option<Head>, HeadError> {
    let Some(lines) = scan(buffer, max_bytes)? else {
        return Ok(None);
    };
    let head = buffer.split_to(lines.length).freeze();
    build(head, &lines).map(Some)
}

/// Where each part of a complete head lies, as offsets from its first byte.
struct Lines {
    length: usize,
    version: Version,
    method: Method,
    target: Span,
    /// (name, value) of each header line; the first `count` entries are used.
    headers: [(Span, Span); MAX_HEADERS],
    count: usize,
}

/// Where a part of a head lies in its buffer, as byte offsets (heads are far below 4 GiB): kept
/// while the buffer is borrowed by the parser, used once the head is split off and frozen.
#[derive(Clone, Copy, Default)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `part`, a slice of `buffer`.
    pub(crate) fn of(part: &[u8], buffer: &[u8]) -> Self {
        let start = part.as_ptr() as usize - buffer.as_ptr() as usize;
        Self {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The httparse pass: the head's extent and the offsets of its parts, or `None` while it is
/// incomplete.
fn scan(buffer: &[u8], max_bytes: usize) -> Result<Option<Lines>, HeadError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut lines);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            // Incomplete, and already this long: the whole head will be longer.
            return if buffer.len() >= max_bytes {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(parse_error(error))),
    };
    if length > max_bytes {
        return Err(HeadError::TooLarge);
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Malformed("unsupported HTTP version")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let target = Span::of(parsed.path.unwrap_or_default().as_bytes(), buffer);
    let mut headers = [(Span::default(), Span::default()); MAX_HEADERS];
    let count = parsed.headers.len();
    for (slot, line) in headers.iter_mut().zip(parsed.headers.iter()) {
        *slot = (
            Span::of(line.name.as_bytes(), buffer),
            Span::of(line.value, buffer),
        );
    }
    Ok(Some(Lines {
        length,
        version,
        method,
        target,
        headers,
        count,
    }))
}

/// The request `lines` describe, its fields slices of `head`.
fn build(head: Bytes, lines: &Lines) -> Result<Head, HeadError> {
    let Lines {
        version, target, ..
    } = lines;
    let version = *version;
    let method = lines.method.clone();
    let uri = request_target(&method, head.slice(target.range()))?;
    // Room for the lines tether adds (X-Forwarded-*, Via), so they do not grow the map.
    let mut headers = HeaderMap::with_capacity(lines.count + ADDED_HEADERS);
    for (name, value) in &lines.headers[..lines.count] {
        let name = HeaderName::from_bytes(&head[name.range()])
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.range()))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let framing = framing(version, &headers)?;
    let keep_alive = keep_alive(version, &headers);
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
    })
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// The four forms of RFC 9112 §3.2, each only where it belongs.
fn request_target(method: &Method, target: Bytes) -> Result<Uri, HeadError> {
    let malformed = |_| HeadError::Malformed("invalid request target");
    if *method == Method::CONNECT {
        // authority-form: host:port and nothing else.
        let uri = Uri::from_maybe_shared(target.clone()).map_err(malformed)?;
        let plain_authority = uri.scheme().is_none()
            && uri.authority().is_some_and(|a| a.port().is_some())
            && uri.path_and_query().is_none_or(|p| p.as_str().is_empty());
        return if plain_authority {
            Ok(uri)
        } else {
            Err(HeadError::Malformed("CONNECT needs host:port"))
        };
    }
    if target.as_ref() == b"*" {
        return if *method == Method::OPTIONS {
            Uri::from_maybe_shared(Bytes::from_static(b"*")).map_err(malformed)
        } else {
            Err(HeadError::Malformed("* is for OPTIONS only"))
        };
    }
    let uri = Uri::from_maybe_shared(target.clone()).map_err(malformed)?;
    match (uri.scheme_str(), uri.authority()) {
        // origin-form
        (None, None) if target.starts_with(b"/") => Ok(uri),
        // absolute-form
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(HeadError::Malformed("invalid request target")),
    }
}

/// RFC 9112 §6.3, strictly: Transfer-Encoding and Content-Length together, a coding other than
/// a final chunked, Transfer-Encoding in HTTP/1.0 and disagreeing lengths are all refused
/// rather than resolved, since two hops resolving them differently is how requests are
/// smuggled.
fn framing(version: Version, headers: &HeaderMap) -> Result<Framing, HeadError> {
    let has_length = headers.contains_key(CONTENT_LENGTH);
    if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        if has_length {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            (Some(_), _) => Err(HeadError::UnsupportedCoding),
            (None, _) => Err(HeadError::Malformed("empty Transfer-Encoding")),
        };
    }
    if !has_length {
        return Ok(Framing::None);
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("invalid Content-Length"));
            }
            let parsed: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(HeadError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(HeadError::Malformed("conflicting Content-Length"));
            }
            length = Some(parsed);
        }
    }
    match length {
        Some(0) => Ok(Framing::None),
        Some(length) => Ok(Framing::Length(length)),
        None => Err(HeadError::Malformed("invalid Content-Length")),
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with
/// `Connection: keep-alive`.
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_11 {
        !connection_has(headers, "close")
    } else {
        connection_has(headers, "keep-alive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, HeadError> {
        parse(text.as_bytes(), 16 * 1024)
    }

    fn framing_of(text: &str) -> Result<Framing, HeadError> {
        head(text).map(|parsed| parsed.expect("complete").0.framing)
    }

    #[test]
    fn a_plain_request_parses() {
        let text = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: k=v\r\n\r\nNEXT";
        let (head, length) = head(text).expect("valid").expect("complete");
        assert_eq!(length, text.len() - 4);
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri(), "/a?b=c");
        assert_eq!(head.request.headers()["cookie"], "k=v");
        assert_eq!(head.framing, Framing::None);
        assert!(head.keep_alive);
    }

    #[test]
    fn a_shared_head_is_split_off_and_its_fields_are_not_copied() {
        let text = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: k=v\r\n\r\nNEXT";
        let mut buffer = BytesMut::from(text);
        let memory = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let shared = parse_shared(&mut buffer, 16 * 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!(&buffer[..], b"NEXT");
        let (copied, _) = head(text).expect("valid").expect("complete");
        assert_eq!(shared.request.uri(), copied.request.uri());
        assert_eq!(shared.request.headers(), copied.request.headers());
        let cookie = shared.request.headers()["cookie"].as_bytes().as_ptr() as usize;
        assert!(
            memory.contains(&cookie),
            "the value points into the read buffer"
        );
        let path = shared.request.uri().path().as_ptr() as usize;
        assert!(
            memory.contains(&path),
            "the target points into the read buffer"
        );

        let mut partial = BytesMut::from("GET / HTTP/1.1\r\nHost:");
        assert!(matches!(parse_shared(&mut partial, 64), Ok(None)));
        assert_eq!(partial.len(), 21, "an incomplete head stays in the buffer");
    }

    #[test]
    fn partial_heads_wait_until_the_limit() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost:", 64), Ok(None)));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: xxxxxxxx", 20).err(),
            Some(HeadError::TooLarge)
        );
        let exact = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(parse(exact, exact.len()).expect("fits").is_some());
        assert_eq!(
            parse(exact, exact.len() - 1).err(),
            Some(HeadError::TooLarge)
        );
    }

    #[test]
    fn framing_follows_rfc_9112_strictly() {
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for smuggling in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
        ] {
            assert!(
                matches!(framing_of(smuggling), Err(HeadError::Malformed(_))),
                "{smuggling:?}"
            );
        }
        for unsupported in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        ] {
            assert_eq!(
                framing_of(unsupported),
                Err(HeadError::UnsupportedCoding),
                "{unsupported:?}"
            );
        }
    }

    #[test]
    fn request_targets_belong_to_their_methods() {
        assert!(head("CONNECT shop.example.com:443 HTTP/1.1\r\n\r\n").is_ok());
        assert!(head("OPTIONS * HTTP/1.1\r\n\r\n").is_ok());
        assert!(head("GET http://shop.example.com/x HTTP/1.1\r\n\r\n").is_ok());
        for bad in [
            "GET * HTTP/1.1\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\n\r\n",
            "CONNECT shop.example.com HTTP/1.1\r\n\r\n",
            "GET shop.example.com:80 HTTP/1.1\r\n\r\n",
            "GET ftp://shop.example.com/ HTTP/1.1\r\n\r\n",
            "GET x HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(HeadError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_depends_on_version() {
        let kept = |text: &str| head(text).expect("valid").expect("complete").0.keep_alive;
        assert!(kept("GET / HTTP/1.1\r\n\r\n"));
        assert!(!kept("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!kept("GET / HTTP/1.0\r\n\r\n"));
        assert!(kept("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
            Some(HeadError::TooLarge)
        );
    }
}
