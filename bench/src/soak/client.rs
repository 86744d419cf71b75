//! A raw HTTP/1.1 client over tokio sockets: the soak needs byte-level control (slow heads,
//! chunked uploads, malformed input, pauses while reading) that a real client would not give.
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Bytes of a body kept for inspection; the rest is only counted.
const KEEP_BODY: usize = 4096;

/// Why an exchange failed, as counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    /// The peer closed (FIN) before a whole response.
    Closed,
    /// The peer reset the connection.
    Reset,
    Timeout,
    /// Not HTTP/1.1 as expected.
    Malformed,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect failed",
            Failure::Closed => "closed before response",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Malformed => "malformed response",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn io_failure(error: &std::io::Error) -> Failure {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Reset,
        UnexpectedEof => Failure::Closed,
        TimedOut => Failure::Timeout,
        _ => Failure::Reset,
    }
}

/// A response read whole (its body counted, the first bytes kept).
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_start: Vec<u8>,
    /// The server said it will close (or HTTP/1.0 without keep-alive).
    pub closing: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The echo pod that answered.
    pub fn pod(&self) -> Option<&str> {
        self.header("x-pod")
    }

    /// `NAME=VALUE` of the Set-Cookie for `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next().map(str::trim))
            .find(|pair| pair.split_once('=').is_some_and(|(k, _)| k == name))
            .map(str::to_string)
    }
}

/// A pause in the middle of reading a body: the slow reader.
#[derive(Clone, Copy)]
pub struct Pause {
    pub after: usize,
    pub duration: Duration,
}

/// One client connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    pub async fn connect(address: SocketAddr, limit: Duration) -> Result<Self, Failure> {
        let stream = timeout(limit, TcpStream::connect(address))
            .await
            .map_err(|_| Failure::Connect)?
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(16 << 10),
        })
    }

    pub async fn send(&mut self, bytes: &[u8], limit: Duration) -> Result<(), Failure> {
        timeout(limit, self.stream.write_all(bytes))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| io_failure(&e))
    }

    /// Reads more into the buffer; `Ok(false)` at EOF.
    async fn fill(&mut self, limit: Duration) -> Result<bool, Failure> {
        let mut chunk = [0u8; 64 << 10];
        let n = timeout(limit, self.stream.read(&mut chunk))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| io_failure(&e))?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads raw bytes (a tunnel) until `n` arrived.
    pub async fn read_exact_raw(&mut self, n: usize, limit: Duration) -> Result<Vec<u8>, Failure> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.buffer.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.fill(left).await? {
                return Err(Failure::Closed);
            }
        }
        Ok(self.buffer.drain(..n).collect())
    }

    /// Reads one response to a request of `method`, every read bounded by `limit`.
    pub async fn response(
        &mut self,
        method: &str,
        limit: Duration,
        pause: Option<Pause>,
    ) -> Result<Response, Failure> {
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(Failure::Malformed);
            }
            if !self.fill(limit).await? {
                return Err(Failure::Closed);
            }
        };
        let mut response = parse_head(&self.buffer[..head_end])?;
        self.buffer.drain(..head_end + 4);
        let no_body = method == "HEAD"
            || response.status == 101
            || response.status == 204
            || response.status == 304
            || (100..200).contains(&response.status);
        if no_body {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = response
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut paused = pause.is_none();
        let keep = |response: &mut Response, bytes: &[u8]| {
            let room = KEEP_BODY.saturating_sub(response.body_start.len());
            response
                .body_start
                .extend_from_slice(&bytes[..room.min(bytes.len())]);
            response.body_len += bytes.len();
        };
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(end) = find(&self.buffer, b"\r\n") {
                        break end;
                    }
                    if !self.fill(limit).await? {
                        return Err(Failure::Closed);
                    }
                };
                let line = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| Failure::Malformed)?;
                self.buffer.drain(..line_end + 2);
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    loop {
                        if let Some(end) = find(&self.buffer, b"\r\n") {
                            self.buffer.drain(..end + 2);
                            if end == 0 {
                                return Ok(response);
                            }
                            continue;
                        }
                        if !self.fill(limit).await? {
                            return Err(Failure::Closed);
                        }
                    }
                }
                while self.buffer.len() < size + 2 {
                    if !self.fill(limit).await? {
                        return Err(Failure::Closed);
                    }
                }
                let data: Vec<u8> = self.buffer.drain(..size + 2).collect();
                keep(&mut response, &data[..size]);
            }
        }
        let total = length.unwrap_or(usize::MAX);
        while response.body_len < total {
            if !paused && response.body_len >= pause.map_or(0, |p| p.after) {
                paused = true;
                if let Some(p) = pause {
                    tokio::time::sleep(p.duration).await;
                }
            }
            if self.buffer.is_empty() && !self.fill(limit).await? {
                if length.is_none() {
                    response.closing = true;
                    return Ok(response);
                }
                return Err(Failure::Closed);
            }
            let take = (total - response.body_len).min(self.buffer.len());
            let data: Vec<u8> = self.buffer.drain(..take).collect();
            keep(&mut response, &data);
        }
        Ok(response)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<Response, Failure> {
    let text = std::str::from_utf8(head).map_err(|_| Failure::Malformed)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Failure::Malformed);
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(Failure::Malformed)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = Response {
        status,
        headers,
        ..Response::default()
    };
    let connection = response
        .header("connection")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    response.closing = connection.contains("close")
        || (version == "HTTP/1.0" && !connection.contains("keep-alive"));
    Ok(response)
}

/// A request head: `METHOD PATH HTTP/1.1`, Host, the given headers, an empty line.
pub fn head(method: &str, path: &str, host: SocketAddr, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() -> Result<(), Failure> {
        let r = parse_head(b"HTTP/1.1 200 OK\r\nx-pod: pod-1\r\nSet-Cookie: s=abc; Path=/")?;
        assert_eq!(r.status, 200);
        assert_eq!(r.pod(), Some("pod-1"));
        assert_eq!(r.set_cookie("s").as_deref(), Some("s=abc"));
        assert!(!r.closing);
        assert!(parse_head(b"HTTP/1.0 400 Bad\r\n")?.closing);
        assert!(parse_head(b"garbage").is_err());
        Ok(())
    }
}
