//! Loopback ports, and a blocking HTTP/1.1 `GET` with no dependencies (the async hyper client
//! of the tests is [`crate::http`]).
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct loopback ports that were free a moment ago (all bound at once, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot reserve a loopback port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An HTTP/1.1 response as read by [`http_get`].
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy); complete when Content-Length or the connection's end said so.
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `NAME=VALUE` of the `Set-Cookie` for `name`, without its attributes.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next().map(str::trim))
            .find(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name))
            .map(str::to_string)
    }
}

/// One `GET` over a fresh connection (`Connection: close`), bounded to 5 s.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let deadline = Instant::now() + timeout;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(response) = parse_response(&buffer, false)? {
            return Ok(response);
        }
        if Instant::now() >= deadline {
            bail!("no complete response from {addr} within {timeout:?}");
        }
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("reading the response from {addr}"))?;
        if n == 0 {
            return parse_response(&buffer, true)?
                .with_context(|| format!("{addr} closed the connection before a full response"));
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// `Some` once the head and (with a Content-Length) the body are in, or at EOF.
pub fn parse_response(buffer: &[u8], eof: bool) -> Result<Option<HttpResponse>> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buffer[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: String::new(),
    };
    let body = &buffer[end + 4..];
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let complete = eof || length.is_some_and(|len| body.len() >= len);
    if complete {
        let body = &body[..length.unwrap_or(body.len()).min(body.len())];
        response.body = String::from_utf8_lossy(body).into_owned();
    }
    Ok(complete.then_some(response))
}

/// An HTTPS request made with curl (`curl -i`), for the demo and the benches' checks.
pub struct Https<'a> {
    /// Where the TLS listener is.
    pub address: SocketAddr,
    /// The name in the URL and the SNI (resolved to `address`); `None` to use the address.
    pub name: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    /// `--http2` (ALPN offers h2), else `--http1.1`.
    pub http2: bool,
    /// The CA to trust; `None` to not verify the certificate (`-k`).
    pub ca: Option<&'a std::path::Path>,
}

/// What curl received: the status line as sent (`HTTP/2 200`) and the response.
pub struct HttpsResponse {
    pub status_line: String,
    pub response: HttpResponse,
}

impl Https<'_> {
    pub fn get(&self) -> Result<HttpsResponse> {
        let port = self.address.port();
        let mut command = std::process::Command::new("curl");
        command
            .args(["-sS", "-i", "--max-time", "10"])
            .arg(if self.http2 { "--http2" } else { "--http1.1" });
        match self.ca {
            Some(ca) => command.arg("--cacert").arg(ca),
            None => command.arg("-k"),
        };
        let host = match self.name {
            Some(name) => {
                command
                    .arg("--resolve")
                    .arg(format!("{name}:{port}:{}", self.address.ip()));
                format!("{name}:{port}")
            }
            None => self.address.to_string(),
        };
        for (name, value) in self.headers {
            command.arg("-H").arg(format!("{name}: {value}"));
        }
        let output = command
            .arg(format!("https://{host}{}", self.path))
            .output()
            .context("curl (apt-get install curl)")?;
        if !output.status.success() {
            bail!(
                "curl https://{host}{} failed: {}",
                self.path,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let response =
            parse_response(&output.stdout, true)?.context("curl printed no complete response")?;
        let status_line = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(HttpsResponse {
            status_line,
            response,
        })
    }
}

/// tether's `tether_config_generation`, read from the admin endpoint at `admin`.
pub fn config_generation(admin: SocketAddr) -> Result<u64> {
    let metrics = http_get(admin, "/metrics", &[])?;
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("tether_config_generation "))
        .and_then(|v| v.trim().parse().ok())
        .context("no tether_config_generation metric")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_cookie() -> Result<()> {
        let raw = b"HTTP/1.1 200 OK\r\nset-cookie: session-id=abc.def=; Path=/; HttpOnly\r\n\
                    Set-Cookie: other=1\r\ncontent-length: 2\r\n\r\nok";
        let response = parse_response(raw, false)?.context("complete")?;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.set_cookie("session-id").as_deref(),
            Some("session-id=abc.def=")
        );
        assert_eq!(response.set_cookie("SRV"), None);
        assert!(parse_response(&raw[..raw.len() - 1], false)?.is_none());
        Ok(())
    }
}
