//! The traffic mix, one tokio task per loop: sticky keep-alive sessions, new sessions, uploads,
//! WebSocket tunnels, slow clients and bad requests. Every loop ends at the deadline or after a
//! bounded number of rounds, and every read and write is bounded in time.
use super::client::{head, Conn, Failure, Pause, Response};
use super::stats::{Note, Stats};
use super::world::{Landing, Move, World};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, Instant};

pub const COOKIE: &str = "session-id";
/// Bound on one read or write; tether's own timeouts (header read 10 s) are well inside it.
const IO_LIMIT: Duration = Duration::from_secs(20);
/// No loop runs more rounds than this, whatever the deadline.
const MAX_ROUNDS: u64 = 10_000_000;
/// Requests per keep-alive connection before a sticky worker opens a new one.
const REQUESTS_PER_CONN: u32 = 500;
const MIB: usize = 1 << 20;

pub struct Ctx {
    pub proxy: SocketAddr,
    pub world: Arc<World>,
    pub stats: Arc<Stats>,
    pub deadline: Instant,
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    fn note(&self, t0: f64, kind: &str, what: &str, detail: String) -> Note {
        Note {
            t0,
            t1: self.world.now(),
            kind: kind.to_string(),
            what: what.to_string(),
            detail,
        }
    }

    /// Counts a failure, explained when a kill of the session's target (any, if new) overlaps.
    fn fail(&self, kind: &str, session: &Session, failure: Failure, t0: f64) {
        let t1 = self.world.now();
        let cause = self
            .world
            .explains_5xx(session.pin.as_deref(), t0, t1)
            .then_some("backend killed");
        self.stats
            .failure(kind, &format!("error: {failure}"), cause, || {
                self.note(
                    t0,
                    kind,
                    &format!("error: {failure}"),
                    format!("session {} pinned to {:?}", session.id, session.pin),
                )
            });
    }
}

/// A client session: its cookie and the target that cookie was issued for.
#[derive(Clone, Debug, Default)]
pub struct Session {
    pub id: usize,
    pub cookie: Option<String>,
    pub pin: Option<String>,
}

impl Session {
    pub fn new(id: usize) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    fn cookie_header(&self) -> Vec<(&str, &str)> {
        self.cookie
            .as_deref()
            .map(|c| ("Cookie", c))
            .into_iter()
            .collect()
    }
}

/// xorshift64*: enough randomness for sizes and picks, with no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Checks an answer against the session's pin, counts it, and follows the Set-Cookie.
fn observe(ctx: &Ctx, kind: &str, session: &mut Session, response: &Response, t0: f64) {
    let t1 = ctx.world.now();
    let status = response.status;
    let explained = status >= 500 && ctx.world.explains_5xx(session.pin.as_deref(), t0, t1);
    ctx.stats.status(kind, status, explained, || {
        ctx.note(
            t0,
            kind,
            &format!("{status}"),
            format!(
                "session {} pinned to {:?}; body {:?}",
                session.id,
                session.pin,
                String::from_utf8_lossy(&response.body_start[..response.body_start.len().min(200)])
                    .trim()
            ),
        )
    });
    if !(200..300).contains(&status) && status != 101 {
        return;
    }
    let Some(pod) = response.pod().map(str::to_string) else {
        ctx.stats.outcome(kind, "answer without x-pod");
        return;
    };
    let set_cookie = response.set_cookie(COOKIE);
    match session.pin.as_deref() {
        Some(pin) if pin == pod => ctx.stats.kept(),
        Some(pin) => {
            let verdict = ctx.world.judge_move(pin, t0, t1);
            let why = match verdict {
                Move::TargetRemoved => "target removed",
                Move::BackendKilled => "backend killed",
                Move::Lost => "LOST",
            };
            ctx.stats.moved(why, verdict == Move::Lost, || {
                ctx.note(
                    t0,
                    kind,
                    "lost session",
                    format!(
                        "session {} pinned to {pin} answered by {pod}; new cookie: {}",
                        session.id,
                        set_cookie.is_some()
                    ),
                )
            });
            if set_cookie.is_none() {
                ctx.stats.outcome(kind, "moved without a new cookie");
            }
        }
        None => {
            let landing = ctx.world.judge_landing(&pod, t0, t1);
            if landing != Landing::Ok {
                let what = match landing {
                    Landing::Draining => "new session on a draining target",
                    _ => "new session on a removed target",
                };
                ctx.stats.bad_landing(ctx.note(t0, kind, what, pod.clone()));
            }
            if set_cookie.is_none() {
                ctx.stats.outcome(kind, "new session without Set-Cookie");
            }
        }
    }
    if let Some(cookie) = set_cookie {
        session.cookie = Some(cookie);
        session.pin = Some(pod);
    }
}

/// Keep-alive connections cycling over a few pinned sessions.
pub async fn sticky(ctx: Arc<Ctx>, mut sessions: Vec<Session>, pace: Duration) {
    const KIND: &str = "sticky keep-alive";
    let mut next = 0usize;
    let mut rounds = 0u64;
    'connections: while ctx.running() && rounds < MAX_ROUNDS {
        let Ok(mut conn) = Conn::connect(ctx.proxy, IO_LIMIT).await else {
            ctx.fail(
                KIND,
                &Session::new(usize::MAX),
                Failure::Connect,
                ctx.world.now(),
            );
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        for _ in 0..REQUESTS_PER_CONN {
            if !ctx.running() {
                break 'connections;
            }
            rounds += 1;
            let count = sessions.len();
            let session = &mut sessions[next % count];
            next += 1;
            let t0 = ctx.world.now();
            let request = head("GET", "/echo/sticky", ctx.proxy, &session.cookie_header());
            let result = match conn.send(&request, IO_LIMIT).await {
                Ok(()) => conn.response("GET", IO_LIMIT, None).await,
                Err(failure) => Err(failure),
            };
            match result {
                Ok(response) => {
                    observe(&ctx, KIND, session, &response, t0);
                    if response.closing {
                        continue 'connections;
                    }
                }
                Err(failure) => {
                    ctx.fail(KIND, session, failure, t0);
                    continue 'connections;
                }
            }
            sleep(pace).await;
        }
    }
}

/// Brand-new sessions: no cookie, a fresh connection each (closed after one to three requests).
pub async fn new_sessions(ctx: Arc<Ctx>, seed: u64, pace: Duration) {
    const KIND: &str = "new session";
    let mut rng = Rng::new(seed);
    let mut id = 1_000_000 + seed as usize * 1_000_000;
    for _ in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let t0 = ctx.world.now();
        let Ok(mut conn) = Conn::connect(ctx.proxy, IO_LIMIT).await else {
            ctx.fail(KIND, &Session::new(id), Failure::Connect, t0);
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let requests = 1 + rng.below(3);
        for i in 0..requests {
            id += 1;
            let mut session = Session::new(id);
            let last = i + 1 == requests;
            let headers: &[(&str, &str)] = if last {
                &[("Connection", "close")]
            } else {
                &[]
            };
            let t0 = ctx.world.now();
            let request = head("GET", "/echo/new", ctx.proxy, headers);
            let result = match conn.send(&request, IO_LIMIT).await {
                Ok(()) => conn.response("GET", IO_LIMIT, None).await,
                Err(failure) => Err(failure),
            };
            match result {
                Ok(response) => observe(&ctx, KIND, &mut session, &response, t0),
                Err(failure) => {
                    ctx.fail(KIND, &session, failure, t0);
                    break;
                }
            }
        }
        sleep(pace).await;
    }
}

/// POST bodies of 1–8 MiB, every other one chunked, on pinned sessions over keep-alive.
pub async fn uploads(ctx: Arc<Ctx>, mut sessions: Vec<Session>, seed: u64, pace: Duration) {
    let mut rng = Rng::new(seed);
    let payload: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    let mut conn: Option<Conn> = None;
    for round in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let chunked = round % 2 == 1;
        let kind = if chunked {
            "upload (chunked)"
        } else {
            "upload (content-length)"
        };
        let size = MIB + rng.below(7 * MIB as u64 + 1) as usize;
        let count = sessions.len();
        let session = &mut sessions[round as usize % count];
        let t0 = ctx.world.now();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(ctx.proxy, IO_LIMIT).await {
                Ok(c) => c,
                Err(failure) => {
                    ctx.fail(kind, session, failure, t0);
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let result = send_upload(&mut c, &ctx, session, &payload[..size], chunked).await;
        match result {
            Ok(response) => {
                let received = response
                    .header("x-received-bytes")
                    .and_then(|v| v.parse::<usize>().ok());
                if response.status == 200 && received != Some(size) {
                    ctx.stats.failure(kind, "body truncated", None, || {
                        ctx.note(
                            t0,
                            kind,
                            "body truncated",
                            format!("sent {size}, backend read {received:?}"),
                        )
                    });
                }
                observe(&ctx, kind, session, &response, t0);
                if !response.closing {
                    conn = Some(c);
                }
            }
            Err(failure) => ctx.fail(kind, session, failure, t0),
        }
        sleep(pace).await;
    }
}

async fn send_upload(
    conn: &mut Conn,
    ctx: &Ctx,
    session: &Session,
    body: &[u8],
    chunked: bool,
) -> Result<Response, Failure> {
    let length = body.len().to_string();
    let mut headers = session.cookie_header();
    headers.push(("Content-Type", "application/octet-stream"));
    if chunked {
        headers.push(("Transfer-Encoding", "chunked"));
    } else {
        headers.push(("Content-Length", &length));
    }
    conn.send(&head("POST", "/echo/upload", ctx.proxy, &headers), IO_LIMIT)
        .await?;
    if chunked {
        for piece in body.chunks(64 << 10) {
            let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
            frame.extend_from_slice(piece);
            frame.extend_from_slice(b"\r\n");
            conn.send(&frame, IO_LIMIT).await?;
        }
        conn.send(b"0\r\n\r\n", IO_LIMIT).await?;
    } else {
        conn.send(body, IO_LIMIT).await?;
    }
    conn.response("POST", IO_LIMIT, None).await
}

/// WebSocket-style Upgrade tunnels on a pinned session: open, echo messages for a few seconds,
/// close; the data must come back intact.
pub async fn tunnels(ctx: Arc<Ctx>, mut session: Session, seed: u64) {
    const KIND: &str = "websocket";
    let mut rng = Rng::new(seed);
    for _ in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let t0 = ctx.world.now();
        let mut conn = match Conn::connect(ctx.proxy, IO_LIMIT).await {
            Ok(c) => c,
            Err(failure) => {
                ctx.fail(KIND, &session, failure, t0);
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut headers = session.cookie_header();
        headers.extend([
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let opened = match conn
            .send(&head("GET", "/echo/ws", ctx.proxy, &headers), IO_LIMIT)
            .await
        {
            Ok(()) => conn.response("GET", IO_LIMIT, None).await,
            Err(failure) => Err(failure),
        };
        let response = match opened {
            Ok(response) => response,
            Err(failure) => {
                ctx.fail(KIND, &session, failure, t0);
                continue;
            }
        };
        observe(&ctx, KIND, &mut session, &response, t0);
        if response.status != 101 {
            sleep(Duration::from_millis(200)).await;
            continue;
        }
        let pod = response.pod().unwrap_or_default().to_string();
        let messages = 10 + rng.below(30);
        for i in 0..messages {
            if !ctx.running() {
                break;
            }
            let size = 1 + rng.below(16 << 10) as usize;
            let message: Vec<u8> = (0..size).map(|b| ((b as u64 + i) % 253) as u8).collect();
            let echoed = match conn.send(&message, IO_LIMIT).await {
                Ok(()) => conn.read_exact_raw(size, IO_LIMIT).await,
                Err(failure) => Err(failure),
            };
            match echoed {
                Ok(data) if data == message => {
                    ctx.stats
                        .answered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ctx.stats.outcome(KIND, "message echoed");
                }
                Ok(_) => {
                    ctx.stats.failure(KIND, "tunnel data corrupted", None, || {
                        ctx.note(t0, KIND, "tunnel data corrupted", pod.clone())
                    });
                    break;
                }
                Err(failure) => {
                    let cause = ctx.world.tunnel_break_cause(&pod, t0, ctx.world.now());
                    ctx.stats
                        .failure(KIND, &format!("tunnel broken: {failure}"), cause, || {
                            ctx.note(
                                t0,
                                KIND,
                                "tunnel broken",
                                format!("tunnel to {pod}: {failure}"),
                            )
                        });
                    break;
                }
            }
            sleep(Duration::from_millis(50 + rng.below(250))).await;
        }
    }
}

/// Slow senders: the request head one byte at a time (well within tether's header timeout).
pub async fn slow_heads(ctx: Arc<Ctx>, mut session: Session, byte_gap: Duration) {
    const KIND: &str = "slow head";
    for _ in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let t0 = ctx.world.now();
        let result = async {
            let mut conn = Conn::connect(ctx.proxy, IO_LIMIT).await?;
            let mut headers = session.cookie_header();
            headers.push(("Connection", "close"));
            for byte in head("GET", "/echo/slow", ctx.proxy, &headers) {
                conn.send(&[byte], IO_LIMIT).await?;
                sleep(byte_gap).await;
            }
            conn.response("GET", IO_LIMIT, None).await
        }
        .await;
        match result {
            Ok(response) => observe(&ctx, KIND, &mut session, &response, t0),
            Err(failure) => ctx.fail(KIND, &session, failure, t0),
        }
    }
}

/// Slow readers: a large response, of which the client reads a little, then nothing for a while.
pub async fn slow_readers(ctx: Arc<Ctx>, mut session: Session, size: usize, pause: Duration) {
    const KIND: &str = "slow reader";
    let path = format!("/echo/big?size={size}");
    for _ in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let t0 = ctx.world.now();
        let result = async {
            let mut conn = Conn::connect(ctx.proxy, IO_LIMIT).await?;
            conn.send(
                &head("GET", &path, ctx.proxy, &session.cookie_header()),
                IO_LIMIT,
            )
            .await?;
            let pause = Pause {
                after: 64 << 10,
                duration: pause,
            };
            conn.response("GET", IO_LIMIT, Some(pause)).await
        }
        .await;
        match result {
            Ok(response) => {
                if response.status == 200 && response.body_len != size {
                    ctx.stats.failure(KIND, "body truncated", None, || {
                        ctx.note(t0, KIND, "body truncated", format!("{}", response.body_len))
                    });
                }
                observe(&ctx, KIND, &mut session, &response, t0);
            }
            Err(failure) => ctx.fail(KIND, &session, failure, t0),
        }
    }
}

/// Slowloris: a head trickled at one byte a second must be cut off (4xx or close) by tether's
/// header timeout, never held open for good.
pub async fn too_slow(ctx: Arc<Ctx>, max_wait: Duration) {
    const KIND: &str = "too-slow head";
    for _ in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let t0 = ctx.world.now();
        let mut conn = match Conn::connect(ctx.proxy, IO_LIMIT).await {
            Ok(c) => c,
            Err(failure) => {
                ctx.fail(KIND, &Session::new(0), failure, t0);
                continue;
            }
        };
        let bytes = b"GET /echo/slowloris HTTP/1.1\r\nHost: soak\r\nX-Trickle: ";
        let started = Instant::now();
        let mut i = 0usize;
        let outcome = loop {
            if !ctx.running() {
                break None;
            }
            if started.elapsed() > max_wait {
                break Some(Err(Failure::Timeout));
            }
            // Past the fixed part, keep trickling header value bytes.
            let byte = bytes.get(i).copied().unwrap_or(b'a');
            i += 1;
            if let Err(failure) = conn.send(&[byte], IO_LIMIT).await {
                break Some(Err(failure));
            }
            match tokio::time::timeout(
                Duration::from_secs(1),
                conn.response("GET", Duration::from_secs(5), None),
            )
            .await
            {
                Ok(result) => break Some(result),
                Err(_) => continue,
            }
        };
        match outcome {
            None => break,
            Some(Ok(response)) => {
                ctx.stats.status(KIND, response.status, false, || {
                    ctx.note(t0, KIND, &format!("{}", response.status), String::new())
                });
            }
            Some(Err(Failure::Closed | Failure::Reset)) => {
                ctx.stats.outcome(KIND, "closed by tether");
            }
            Some(Err(Failure::Timeout)) => {
                ctx.stats.failure(KIND, "held open", None, || {
                    ctx.note(
                        t0,
                        KIND,
                        "held open",
                        format!("still open after {max_wait:?} of trickling"),
                    )
                });
            }
            Some(Err(failure)) => ctx.stats.failure(KIND, failure.name(), None, || {
                ctx.note(t0, KIND, failure.name(), String::new())
            }),
        }
    }
}

/// Requests no client should send; each on a fresh connection. They must get a 4xx or a close.
pub fn bad_requests(proxy: SocketAddr) -> Vec<(&'static str, Vec<u8>)> {
    let big = "a".repeat(64 << 10);
    vec![
        (
            "malformed head",
            b"GET /echo HTTP/1.1\r\nHost: soak\r\nthis line has no colon\r\n\r\n".to_vec(),
        ),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec()),
        (
            "bad chunk framing",
            b"POST /echo/bad HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "bad content-length",
            b"POST /echo/bad HTTP/1.1\r\nHost: soak\r\nContent-Length: 12abc\r\n\r\nhello".to_vec(),
        ),
        (
            "oversized headers",
            head("GET", "/echo/big-head", proxy, &[("X-Big", &big)]),
        ),
        (
            "CONNECT",
            format!("CONNECT {proxy} HTTP/1.1\r\nHost: {proxy}\r\n\r\n").into_bytes(),
        ),
        ("unknown route", head("GET", "/nowhere", proxy, &[])),
    ]
}

pub async fn bad(ctx: Arc<Ctx>, pace: Duration) {
    let requests = bad_requests(ctx.proxy);
    for round in 0..MAX_ROUNDS {
        if !ctx.running() {
            break;
        }
        let (name, bytes) = &requests[round as usize % requests.len()];
        let kind = format!("bad: {name}");
        let t0 = ctx.world.now();
        let result = async {
            let mut conn = Conn::connect(ctx.proxy, IO_LIMIT).await?;
            conn.send(bytes, IO_LIMIT).await?;
            conn.response("GET", Duration::from_secs(15), None).await
        }
        .await;
        match result {
            // A bad request's 5xx is never explained by churn: it must not reach a backend.
            Ok(response) => ctx.stats.status(&kind, response.status, false, || {
                ctx.note(
                    t0,
                    &kind,
                    &format!("{}", response.status),
                    String::from_utf8_lossy(&response.body_start)
                        .trim()
                        .to_string(),
                )
            }),
            Err(Failure::Closed | Failure::Reset) => ctx.stats.outcome(&kind, "closed"),
            Err(failure) => ctx.stats.failure(&kind, failure.name(), None, || {
                ctx.note(t0, &kind, failure.name(), String::new())
            }),
        }
        sleep(pace).await;
    }
}
