//! The gateway's own Socket.IO transport: every session, on WebSocket, on long-polling, and
//! from long-polling upgraded to WebSocket (the stock client's default).
//!
//! Every accepted connection's first request line is peeked at: a Socket.IO WebSocket handshake
//! (a new session, or the upgrade of a long-polling one) is served here, on the raw stream, so
//! no HTTP server buffer outlives it; anything else (the HTTP API, long-polling requests) goes
//! to the HTTP server untouched, which hands `/socket.io/` requests to [`polling`] (and the
//! rare WebSocket handshake that arrives on a kept-alive connection, taken back after its
//! 101). One task per session, no per-socket channel, and relayed events are encoded once and
//! written straight to the socket (see [`conn`]), or queued for a long-polling GET.
//!
//! At the handshake a session may agree to permessage-deflate ([`deflate`]) and to the
//! MessagePack parser ([`msgpack`], `parser=msgpack` in the query); [`codec::Codec`] records both.
//!
//! A leaf: it reads and writes Engine.IO / Socket.IO frames and hands what it decoded (a
//! connect, an event, the end of a session) to a [`Handler`] implemented once above it, the
//! way a command handler sits above a connection. It never calls into the handlers' modules.

pub mod codec;
pub mod conn;
pub mod deflate;
pub mod frame;
pub mod http1;
pub mod msgpack;
pub mod packet;
pub mod polling;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use axum::http::StatusCode;
use serde_json::Value;

use crate::drain::TrackedStream;
pub use conn::Conn;

/// What the transport hands decoded packets to.
pub trait Handler: Send + Sync + 'static {
    /// What the layer above keeps on each session.
    type User: Send + Sync + 'static;
    /// The transport's settings.
    fn settings(&self) -> &Settings;
    /// Whether a new session from a page of `origin` (the `Origin` header, absent for
    /// non-browser clients) may start now; `Err` refuses the upgrade (e.g. while draining).
    fn admit(&self, origin: Option<&[u8]>) -> Result<(), Refusal>;
    /// Whether a WebSocket from a page of `origin` is accepted at all.
    fn admit_origin(&self, origin: Option<&[u8]>) -> Result<(), Refusal>;
    /// The layer's data for a new session (`polling`: it starts on long-polling).
    fn new_user(&self, polling: bool) -> Self::User;
    /// The long-polling sessions.
    fn polls(&self) -> &polling::Polls<Self::User>;
    /// Whether any page on another origin may use long-polling (CORS answers are due).
    fn cors_open(&self) -> bool;
    /// Whether a page of `origin` may (its answers carry `Access-Control-Allow-Origin`).
    fn cors_allows(&self, origin: &[u8]) -> bool;
    /// A Socket.IO connect packet for `/`. The handler answers it, when it is done, with
    /// [`Conn::accept_connect`] or [`Conn::refuse_connect`]; events are dropped until then.
    fn connect(&self, conn: Arc<Conn<Self::User>>, auth: Option<Value>);
    /// An event of a connected session, with the id of the ack it asks for.
    fn event(
        &self,
        conn: &Arc<Conn<Self::User>>,
        name: String,
        data: Option<Value>,
        ack: Option<u64>,
    );
    /// A connected session ended (for a label of `reason`).
    fn closed(&self, conn: &Arc<Conn<Self::User>>, reason: &'static str);
}

/// Limits and timers of the transport.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// How long a pong may take.
    pub ping_timeout: Duration,
    /// How long a session may take to send its Socket.IO connect.
    pub connect_timeout: Duration,
    /// Largest message a client may send, in bytes.
    pub max_packet: u64,
    /// Most live events queued for a session before it counts as a slow consumer.
    pub socket_buffer: usize,
    /// Most events a replay may hold (never refused for a full queue).
    pub max_replay: usize,
    /// permessage-deflate, when on: messages shorter than this go uncompressed (`None`: the
    /// extension is never agreed to).
    pub compression_min: Option<u32>,
}

/// Outcome of handing one message to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written or queued.
    Ok,
    /// The outgoing queue is full: the session cannot keep up.
    Full,
    /// The session is gone.
    Closed,
}

/// Most bytes of a request line looked at to route a connection.
const CLASSIFY_PEEK: usize = 256;
/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted for a WebSocket handshake.
const MAX_HEAD: usize = 8192;

/// The handshake query's `parser`: `Ok(true)` for `msgpack`, `Ok(false)` when absent (JSON).
pub fn wants_msgpack(query: &str) -> Result<bool, Refusal> {
    match param(query, "parser") {
        None => Ok(false),
        Some("msgpack") => Ok(true),
        Some(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_parser",
            "parser must be msgpack (socket.io-msgpack-parser) or left out (JSON)",
        )),
    }
}

/// The value of `name` in a request's `query` (its first occurrence).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Where a new connection goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A Socket.IO WebSocket handshake: served here.
    WebSocket,
    /// An Engine.IO long-polling request: served here ([`http1`]).
    Polling,
    /// Everything else: the HTTP server.
    Http,
}

/// Serves one accepted connection: upgrades it here or hands it to the HTTP server.
/// A long-polling connection is served here one request at a time ([`http1`]), each next
/// request routed again, until the client closes it, a request of another kind comes, or it
/// stays idle for [`http1::IDLE`].
pub async fn route<H: Handler>(
    h: Arc<H>,
    mut stream: TrackedStream,
    addr: SocketAddr,
    to_http: mpsc::Sender<(TrackedStream, SocketAddr)>,
) {
    let mut wait = HEAD_TIMEOUT;
    loop {
        match classify_within(&stream, wait).await {
            // Each boxed, so a connection's task holds only the state of what it became (a
            // long-polling connection waits here for as long as its GET).
            Some(Route::WebSocket) => return Box::pin(upgrade(h, stream)).await,
            Some(Route::Polling) => {
                if !Box::pin(http1::serve(&h, &mut stream)).await {
                    return;
                }
                wait = http1::IDLE;
            }
            // Closed or silent before sending a request line.
            None => return,
            Some(Route::Http) => {
                if to_http.send((stream, addr)).await.is_err() {
                    tracing::debug!(%addr, "HTTP server stopped; connection dropped");
                }
                return;
            }
        }
    }
}

/// First pause before peeking again at a request that came in part. A peek is ready as long as
/// any byte waits, so the rest can only be waited for by pausing; the pause doubles up to
/// [`PEEK_PAUSE_MAX`], so a client that trickles its request costs few wake-ups.
const PEEK_PAUSE: Duration = Duration::from_millis(1);
const PEEK_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Pauses for `pause` and returns the next pause.
async fn wait_for_more(pause: Duration) -> Duration {
    tokio::time::sleep(pause).await;
    (pause * 2).min(PEEK_PAUSE_MAX)
}

/// Peeks at the next request line without consuming it, waiting at most `wait` for it (`None`
/// when none came).
async fn classify_within(stream: &TrackedStream, wait: Duration) -> Option<Route> {
    let deadline = tokio::time::Instant::now() + wait;
    // Small: it is part of every connection's task while it waits for a request (a longer
    // request line goes to the HTTP server, which serves it the same way).
    let mut buf = [0u8; CLASSIFY_PEEK];
    let mut pause = PEEK_PAUSE;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.tcp().peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => n,
        };
        let seen = &buf[..n];
        if let Some(end) = seen.windows(2).position(|w| w == b"\r\n") {
            return Some(classify_line(&seen[..end]));
        }
        if n == buf.len() || (n >= 5 && !seen.starts_with(b"GET ") && !seen.starts_with(b"POST ")) {
            return Some(Route::Http);
        }
        // Part of a request line: wait for the rest (rare: it nearly always comes in one piece).
        pause = wait_for_more(pause).await;
    }
}

fn classify_line(line: &[u8]) -> Route {
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Http;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::Http;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/socket.io/" && path != "/socket.io" {
        return Route::Http;
    }
    // The transport as every later step reads it: the first `transport=`.
    match (method, param(query, "transport")) {
        ("GET", Some("websocket")) => Route::WebSocket,
        ("GET" | "POST", Some("polling")) => Route::Polling,
        _ => Route::Http,
    }
}

/// A new Engine.IO session id: 20 url-safe random characters.
pub fn new_sid() -> String {
    use base64::Engine;
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A refused handshake: status, stable code and what to fix.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable error code.
    pub code: &'static str,
    /// What to do about it.
    pub message: &'static str,
}

/// A refusal.
pub fn refuse(status: StatusCode, code: &'static str, message: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

/// A WebSocket handshake the gateway agrees to, whichever server read its request.
pub struct Agreed<U> {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// Parser and compression of the session.
    pub codec: codec::Codec,
    /// The response header line that accepts permessage-deflate (with its CRLF), or "".
    pub extensions: &'static str,
    /// The long-polling session it upgrades (a handshake with `sid`).
    pub session: Option<Arc<Conn<U>>>,
}

/// Checks a WebSocket handshake, its `query` and its headers (`header(name)`: every value of
/// one header): the protocol version, the upgrade headers, the origin and whether a session may
/// start (or, with `sid`, which long-polling session it upgrades), the parser, and
/// permessage-deflate.
pub fn agree<'r, H: Handler>(
    h: &H,
    query: &str,
    header: impl Fn(&str) -> Vec<&'r str>,
) -> Result<Agreed<H::User>, Refusal> {
    let first = |name: &str| header(name).into_iter().next();
    if !query.split('&').any(|kv| kv == "EIO=4") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_protocol_version",
            "only Engine.IO 4 (socket.io-client 3 and later) is supported; connect with EIO=4",
        ));
    }
    let upgrade = first("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = header("connection").iter().any(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade || !connection {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "not_a_websocket_upgrade",
            "transport=websocket needs Upgrade: websocket and Connection: Upgrade headers",
        ));
    }
    if first("sec-websocket-version") != Some("13") {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_websocket_version",
            "only WebSocket version 13 is supported",
        ));
    }
    let Some(key) = first("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "missing_websocket_key",
            "the Sec-WebSocket-Key header is missing",
        ));
    };
    let origin = first("origin").map(str::as_bytes);
    let session = match param(query, "sid") {
        None => {
            h.admit(origin)?;
            None
        }
        // The upgrade of a session already admitted: only the page's origin is checked again
        // (a draining gateway still lets its sessions upgrade).
        Some(sid) => {
            h.admit_origin(origin)?;
            match h.polls().get(sid) {
                Some(c) if c.transport() == "polling" => Some(c),
                Some(_) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "this session is on WebSocket already",
                    ))
                }
                None => {
                    // As for long-polling: a draining gateway answers 503, which the load
                    // balancer retries on the session's own gateway.
                    h.admit(None)?;
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "unknown_sid",
                        "Session ID unknown: start a new session without sid",
                    ));
                }
            }
        }
    };
    let msgpack = match &session {
        // An upgrade keeps the parser its session started with.
        Some(c) => c.codec().msgpack,
        None => wants_msgpack(query)?,
    };
    let offers = header("sec-websocket-extensions");
    let min = h.settings().compression_min;
    let accepted = min.and_then(|min| deflate::negotiate(offers).map(|line| (line, min)));
    Ok(Agreed {
        accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes()),
        codec: codec::Codec::new(msgpack, accepted.map(|(_, min)| min)),
        extensions: accepted.map_or("", |(line, _)| line),
        session,
    })
}

/// Reads the request head, answers the upgrade (or refuses it with a JSON error) and runs the
/// session.
async fn upgrade<H: Handler>(h: Arc<H>, mut stream: TrackedStream) {
    let too_large = "the handshake request head is larger than 8 KiB";
    let head = match read_head(&mut stream, too_large).await {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(r) => return answer_refusal(stream, r).await,
    };
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let agreed = match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {
            let query = req
                .path
                .and_then(|p| p.split_once('?'))
                .map_or("", |(_, q)| q);
            let header = |name: &str| {
                req.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .filter_map(|h| std::str::from_utf8(h.value).ok())
                    .collect()
            };
            agree(&*h, query, header)
        }
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the handshake request could not be parsed as HTTP/1.1",
        )),
    };
    let agreed = match agreed {
        Ok(agreed) => agreed,
        Err(r) => return answer_refusal(stream, r).await,
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{}\r\n",
        agreed.accept, agreed.extensions
    );
    // The session runs in a task of its own: this one, sized for the handshake's buffers, ends
    // here instead of staying alive (and allocated) for the whole session. The 101 goes out
    // with the Engine.IO open packet, in one write.
    let (codec, session) = (agreed.codec, agreed.session);
    tokio::spawn(conn::serve(h, stream, response, Vec::new(), codec, session));
}

/// Reads the next request head, through its blank line and nothing after it, waiting at most
/// [`HEAD_TIMEOUT`]; `Ok(None)` when the connection closed or stayed silent, `Err` (431, with
/// `too_large` to say so) for a head larger than [`MAX_HEAD`].
async fn read_head(
    stream: &mut TrackedStream,
    too_large: &'static str,
) -> Result<Option<Vec<u8>>, Refusal> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = vec![0u8; 512];
    let mut pause = PEEK_PAUSE;
    let end = loop {
        let n = match tokio::time::timeout_at(deadline, stream.tcp().peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(None),
            Ok(Ok(n)) => n,
        };
        if let Some(at) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if n == buf.len() {
            if buf.len() >= MAX_HEAD {
                let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                return Err(refuse(status, "request_too_large", too_large));
            }
            buf.resize(buf.len() * 2, 0);
        } else {
            // Part of a head: wait for the rest.
            pause = wait_for_more(pause).await;
        }
    };
    buf.truncate(end);
    Ok(stream.read_exact(&mut buf).await.ok().map(|_| buf))
}

async fn answer_refusal(mut stream: TrackedStream, r: Refusal) {
    tracing::debug!(code = r.code, "WebSocket handshake refused");
    // The same answer as every HTTP error of the gateway.
    let answer = polling::Answer::from(r);
    let head = http1::head(&answer) + "Connection: close\r\n\r\n";
    let _ = stream
        .write_all(&[head.as_bytes(), &answer.body].concat())
        .await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_requests_are_taken() {
        for line in [
            &b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1"[..],
            b"GET /socket.io?transport=websocket&EIO=4 HTTP/1.1",
            b"GET /socket.io/?EIO=4&transport=websocket&sid=abc HTTP/1.1",
        ] {
            assert_eq!(classify_line(line), Route::WebSocket, "{line:?}");
        }
        for line in [
            &b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1"[..],
            b"POST /socket.io/?EIO=4&transport=polling&sid=a HTTP/1.1",
            // A repeated key: the first one counts, as for every later step.
            b"GET /socket.io/?EIO=4&transport=polling&transport=websocket HTTP/1.1",
        ] {
            assert_eq!(classify_line(line), Route::Polling, "{line:?}");
        }
        for line in [
            &b"OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1"[..],
            b"POST /v1/publish HTTP/1.1",
            b"GET /readyz HTTP/1.1",
            b"GET /other/?transport=websocket HTTP/1.1",
            b"\xff\xfe",
        ] {
            assert_eq!(classify_line(line), Route::Http, "{line:?}");
        }
    }

    #[test]
    fn session_ids_are_random_and_url_safe() {
        let (a, b) = (new_sid(), new_sid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
