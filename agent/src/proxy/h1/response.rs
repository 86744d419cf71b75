//! Writes a response to the client: the head, then the body framed for HTTP/1.1 (its length
//! when known, chunked when not, or until close for an HTTP/1.0 client), coalescing what is
//! ready at once into one write.
use super::socket::ClientSocket;
use super::TargetUpgrade;
use crate::proxy::handler::Answer;
use crate::proxy::headers::connection_has;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{HeaderMap, StatusCode, Version};
use std::io::{self, IoSlice};

/// Below this, body bytes are copied behind the head to save a write; above, written apart.
const COALESCE_BYTES: usize = 16 * 1024;

/// What the connection does after the response.
pub enum Written {
    KeepAlive,
    Close,
    Tunnel(TargetUpgrade),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length,
    Chunked,
    UntilClose,
}

pub async fn write(
    socket: &ClientSocket,
    answer: Answer,
    version: Version,
    is_head: bool,
    keep_alive: bool,
) -> io::Result<Written> {
    let Answer { response, tunnel } = answer;
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    let headers = &mut parts.headers;
    let mut keep_alive = keep_alive && !connection_has(headers, "close");
    let framing = if tunnel.is_some()
        || is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if headers.contains_key(CONTENT_LENGTH) {
        Framing::Length
    } else if let Some(length) = body.size_hint().exact() {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        Framing::Length
    } else if version == Version::HTTP_11 {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    if tunnel.is_none() {
        headers.remove(CONNECTION);
        if !keep_alive {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        } else if version == Version::HTTP_10 {
            headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }
    let mut out = Vec::with_capacity(256);
    head(&mut out, status, headers);
    if framing == Framing::None {
        socket.write_all(&mut [IoSlice::new(&out)]).await?;
        return Ok(match tunnel {
            Some(tunnel) => Written::Tunnel(tunnel),
            None if keep_alive => Written::KeepAlive,
            None => Written::Close,
        });
    }
    loop {
        // What is ready now joins the bytes already queued; only a wait flushes them.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                flush(socket, &mut out, None).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else {
            if framing == Framing::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            flush(socket, &mut out, None).await?;
            break;
        };
        let frame = frame.map_err(|error| match error.downcast::<io::Error>() {
            Ok(error) => *error,
            Err(error) => io::Error::other(error),
        })?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                if framing == Framing::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                }
                if data.len() <= COALESCE_BYTES {
                    out.extend_from_slice(&data);
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    if out.len() >= COALESCE_BYTES {
                        flush(socket, &mut out, None).await?;
                    }
                } else {
                    flush(socket, &mut out, Some(&data)).await?;
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                    out.extend_from_slice(b"0\r\n");
                    fields(&mut out, &trailers);
                    out.extend_from_slice(b"\r\n");
                    flush(socket, &mut out, None).await?;
                    break;
                }
            }
        }
    }
    Ok(if keep_alive && framing != Framing::UntilClose {
        Written::KeepAlive
    } else {
        Written::Close
    })
}

/// tether's own answer when no request could be read (400, 431, 501); the connection closes.
pub async fn write_error(socket: &ClientSocket, status: u16) -> io::Result<()> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    socket
        .write_all(&mut [IoSlice::new(answer.as_bytes())])
        .await
}

async fn flush(socket: &ClientSocket, out: &mut Vec<u8>, then: Option<&[u8]>) -> io::Result<()> {
    let mut parts = [IoSlice::new(out), IoSlice::new(then.unwrap_or_default())];
    socket.write_all(&mut parts).await?;
    out.clear();
    Ok(())
}

fn head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    fields(out, headers);
    out.extend_from_slice(b"\r\n");
}

fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}
