//! Engine.IO v4 long-polling, and WebSocket handshakes that reach the HTTP server: every
//! `/socket.io/` request the HTTP server gets comes here.
//!
//! A long-polling session is a [`Conn`] without a socket (see `conn.rs`): what the gateway sends
//! it is queued as the same WebSocket frames a WebSocket session gets, and a GET takes the whole
//! queue, each frame turned into its Engine.IO packet (text as is, binary as `b` + base64),
//! joined by `\x1e`. A POST carries the client's packets the same way. The same queue bound,
//! slow-consumer cut and replay rule apply as on a WebSocket; when the client upgrades, the
//! WebSocket takes over the session and its queue ([`Conn::take_over`]).
//!
//! Answers follow the reference server (engine.io 6), which the stock client expects: errors
//! are 400 with an Engine.IO error body (`{"code":1,"message":"Session ID unknown"}`), a
//! second concurrent GET ends the session, a body over `maxPayload` is refused with 413.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use super::codec::Codec;
use super::conn::{self, Conn, Polled};
use super::frame;
use super::{msgpack, packet, param, Handler};
use crate::drain::TrackedStream;
use crate::metrics;

/// Longest a GET waits while a WebSocket is taking the session over.
const UPGRADING_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// Separator of the packets of one long-polling payload.
const SEPARATOR: u8 = 0x1e;
/// The opcode bits of a binary WebSocket frame.
const BINARY_OPCODE: u8 = 0x2;

/// Long-polling sessions (and the sessions that upgraded from it) by session id.
pub struct Polls<U>(Mutex<HashMap<Box<str>, Arc<Conn<U>>>>);

impl<U> Default for Polls<U> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<U: Send + Sync + 'static> Polls<U> {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Conn<U>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session.
    pub fn insert(&self, conn: Arc<Conn<U>>) {
        self.lock().insert(conn.sid().into(), conn);
    }

    /// Forgets a session.
    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// The session with this id.
    pub fn get(&self, sid: &str) -> Option<Arc<Conn<U>>> {
        self.lock().get(sid).cloned()
    }

    /// Ends every session still on long-polling with the Engine.IO close (the drain: the stock
    /// client sees a lost transport and reconnects elsewhere), and waits up to `within` for
    /// their pending GETs to carry it out; returns how many sessions it ended.
    pub async fn close_all(&self, within: std::time::Duration) -> usize {
        let polling: Vec<_> = self
            .lock()
            .values()
            .filter(|c| c.transport() == "polling")
            .cloned()
            .collect();
        for conn in &polling {
            conn.end_polling("transport_close");
        }
        let deadline = tokio::time::Instant::now() + within;
        while polling.iter().any(|c| c.is_getting()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        polling.len()
    }
}

/// An Engine.IO error answer: 400 with the reference server's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioError {
    /// `transport` is neither `polling` nor `websocket`.
    UnknownTransport,
    /// No session with this `sid` on this gateway.
    UnknownSid,
    /// A handshake that is not a GET.
    BadHandshakeMethod,
    /// Anything else the protocol does not allow.
    BadRequest,
    /// Not Engine.IO 4.
    UnsupportedProtocolVersion,
}

impl EioError {
    /// The answer: 400 with the reference server's body.
    pub fn answer(self) -> Answer {
        let (code, message, label) = match self {
            EioError::UnknownTransport => (0, "Transport unknown", "unknown_transport"),
            EioError::UnknownSid => (1, "Session ID unknown", "unknown_sid"),
            EioError::BadHandshakeMethod => (2, "Bad handshake method", "bad_handshake_method"),
            EioError::BadRequest => (3, "Bad request", "bad_request"),
            EioError::UnsupportedProtocolVersion => (
                5,
                "Unsupported protocol version",
                "unsupported_protocol_version",
            ),
        };
        ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => label).increment(1);
        tracing::debug!(code, message, "Engine.IO request refused");
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        Answer::new(StatusCode::BAD_REQUEST, JSON, Bytes::from(body))
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=UTF-8";

/// An answer to an Engine.IO request, whichever HTTP server read the request (the gateway's own
/// for a connection whose request is Engine.IO, hyper for the others; see [`super::http1`]).
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The WebSocket version a 426 names as the one spoken (RFC 6455 §4.4), on both servers.
    pub(super) fn refused_version(&self) -> Option<&'static str> {
        (self.status == StatusCode::UPGRADE_REQUIRED).then_some("13")
    }

    fn new(status: StatusCode, content_type: &'static str, body: Bytes) -> Self {
        Self {
            status,
            content_type,
            body,
        }
    }

    fn payload(body: Bytes) -> Self {
        Self::new(StatusCode::OK, TEXT, body)
    }

    fn ok() -> Self {
        Self::new(StatusCode::OK, "text/html", Bytes::from_static(b"ok"))
    }
}

/// A refusal of the gateway (draining, a parser it does not speak): its JSON error body.
impl From<super::Refusal> for Answer {
    fn from(r: super::Refusal) -> Self {
        ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => r.code).increment(1);
        let body = serde_json::json!({ "error": { "code": r.code, "message": r.message } });
        Self::new(r.status, JSON, Bytes::from(body.to_string()))
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let version = self
            .refused_version()
            .map(|v| (header::SEC_WEBSOCKET_VERSION, v));
        let head = (
            [(header::CONTENT_TYPE, self.content_type)],
            AppendHeaders(version),
        );
        (self.status, head, self.body).into_response()
    }
}

/// What an Engine.IO request asks for, once its query is read.
pub enum Step<U> {
    /// A GET of a long-polling session.
    Get(Arc<Conn<U>>),
    /// A POST of a long-polling session (its body is read next, up to [`Handler::settings`]'
    /// `max_packet`).
    Post(Arc<Conn<U>>),
    /// A WebSocket handshake, of a new session or (with `sid`) an upgrade.
    WebSocket,
}

/// Reads an Engine.IO request's method and query; starts a session for a handshake. `Err`:
/// the answer, when it is known at once (an error, a refusal, a new session's open packet).
pub fn step<H: Handler>(h: &Arc<H>, method: &Method, query: &str) -> Result<Step<H::User>, Answer> {
    if param(query, "EIO") != Some("4") {
        return Err(EioError::UnsupportedProtocolVersion.answer());
    }
    let msgpack = super::wants_msgpack(query)?;
    match param(query, "transport") {
        Some("polling") => {}
        Some("websocket") => return Ok(Step::WebSocket),
        _ => return Err(EioError::UnknownTransport.answer()),
    }
    let Some(sid) = param(query, "sid") else {
        if method != Method::GET {
            return Err(EioError::BadHandshakeMethod.answer());
        }
        h.admit(None)?;
        let open = conn::start_polling(h, Codec::new(msgpack, None));
        return Err(Answer::payload(payload(&[(open, 0)])));
    };
    let Some(conn) = h.polls().get(sid).filter(|c| !c.has_ended()) else {
        // A draining gateway answers a session it does not know with 503, which the load
        // balancer retries on the next gateway (the session's own, when affinity still points
        // here): nothing was done with the request.
        h.admit(None)?;
        return Err(EioError::UnknownSid.answer());
    };
    if conn.transport() != "polling" {
        return Err(EioError::BadRequest.answer());
    }
    match *method {
        Method::GET => Ok(Step::Get(conn)),
        Method::POST => Ok(Step::Post(conn)),
        _ => Err(EioError::BadRequest.answer()),
    }
}

/// Serves one `/socket.io/` request that reached the HTTP server.
pub async fn handle<H: Handler>(h: Arc<H>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    match step(&h, req.method(), &query) {
        Err(answer) => answer.into_response(),
        Ok(Step::WebSocket) => websocket(h.clone(), req).await,
        Ok(Step::Get(conn)) => poll(&conn, std::future::pending()).await.into_response(),
        Ok(Step::Post(conn)) => {
            let max = h.settings().max_packet as usize;
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let body = match declared {
                Some(n) if n > max => None,
                _ => axum::body::to_bytes(req.into_body(), max).await.ok(),
            };
            match body {
                Some(body) => post(&*h, &conn, &body),
                None => oversized(&conn, max),
            }
            .into_response()
        }
    }
}

/// A GET: waits until something is queued (the heartbeat's ping at the latest) and answers
/// with all of it. `gone` completes if the client goes away meanwhile: the session ends then,
/// as on the reference server (what the GET would have taken stays queued for nobody).
pub async fn poll<U: Send + Sync + 'static>(
    conn: &Arc<Conn<U>>,
    gone: impl std::future::Future<Output = ()>,
) -> Answer {
    let Some(get) = conn.begin_get() else {
        if conn.transport() == "polling" {
            tracing::debug!(
                sid = conn.sid(),
                "a second GET while one is pending ends the session"
            );
            conn.end_polling("transport_error");
        }
        return EioError::BadRequest.answer();
    };
    tokio::pin!(gone);
    let mut waited_upgrading = false;
    loop {
        let notified = get.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let limit = match conn.poll_now() {
            Polled::Frames(mut taken) => return Answer::payload(payload(taken.make_contiguous())),
            Polled::Packet(packet) => return Answer::payload(Bytes::from_static(packet)),
            Polled::Wait => FOREVER,
            // A GET that came while the client was about to pause polling (sent before it got
            // `3probe`) is answered soon, so the pause is not held up until the next ping; a
            // client that never sends the upgrade packet polls ten times a second at most.
            Polled::Upgrading if !waited_upgrading => UPGRADING_POLL,
            Polled::Upgrading => return Answer::payload(Bytes::from_static(b"6")),
        };
        tokio::select! {
            woken = tokio::time::timeout(limit, notified) => waited_upgrading = woken.is_err(),
            () = &mut gone => {
                conn.end_polling("transport_close");
                return Answer::payload(Bytes::from_static(b"1"));
            }
        }
    }
}

/// Longer than any wait.
const FOREVER: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);

/// A POST body over `maxPayload` (`max`): 413, and the session ends.
pub fn oversized<U: Send + Sync + 'static>(conn: &Arc<Conn<U>>, max: usize) -> Answer {
    ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => "payload_too_large")
        .increment(1);
    tracing::debug!(
        sid = conn.sid(),
        max,
        "a POST larger than maxPayload ends the session"
    );
    conn.end_polling("transport_error");
    let body = serde_json::json!({ "code": 3, "message": "Payload too large" });
    Answer::new(StatusCode::PAYLOAD_TOO_LARGE, JSON, body.to_string().into())
}

/// A POST: the client's packets, joined by `\x1e`.
pub fn post<H: Handler>(h: &H, conn: &Arc<Conn<H::User>>, body: &[u8]) -> Answer {
    let msgpack = conn.codec().msgpack;
    // An empty body carries no packet (the reference server would call it a parse error; a
    // client gains nothing from losing its session over it).
    let parts = body.split(|b| *b == SEPARATOR).filter(|_| !body.is_empty());
    for part in parts {
        let parsed = match part.split_first() {
            Some((b'b', data)) if msgpack => BASE64
                .decode(data)
                .map_err(|_| packet::PacketError("bad_base64"))
                .and_then(|bytes| msgpack::parse(&bytes)),
            _ => std::str::from_utf8(part)
                .map_err(|_| packet::PacketError("invalid_utf8"))
                .and_then(packet::parse),
        };
        match parsed
            .map_err(conn::Stop::from)
            .and_then(|p| conn.on_packet(h, p))
        {
            Ok(true) => conn.polled_pong(),
            Ok(false) => {}
            Err(stop) => {
                conn.end_polling(stop.reason);
                return if stop.reason == "bad_packet" {
                    EioError::BadRequest.answer()
                } else {
                    Answer::ok()
                };
            }
        }
    }
    Answer::ok()
}

/// The long-polling payload of queued frames: each frame's Engine.IO packet, joined by `\x1e`.
/// An entry may hold several frames back to back (a room's events framed together).
fn payload(queued: &[(Bytes, usize)]) -> Bytes {
    let mut out = BytesMut::new();
    for (frames, _) in queued {
        let mut rest = &frames[..];
        while let Some((first, data, used)) = frame::split_server_frame(rest) {
            if !out.is_empty() {
                out.extend_from_slice(&[SEPARATOR]);
            }
            if first & 0x0f == BINARY_OPCODE {
                out.extend_from_slice(b"b");
                out.extend_from_slice(BASE64.encode(data).as_bytes());
            } else {
                out.extend_from_slice(data);
            }
            rest = &rest[used..];
        }
    }
    out.freeze()
}

/// A WebSocket handshake that reached the HTTP server (on a kept-alive connection, through a
/// proxy that reuses its upstream connections): answered here with 101, then the connection is
/// taken back from the HTTP server and served by the gateway's own transport, a new session
/// or, with `sid`, the upgrade of a long-polling session.
async fn websocket<H: Handler>(h: Arc<H>, mut req: Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    let agreed = match super::agree(&*h, query, header) {
        Ok(agreed) => agreed,
        Err(refusal) => return Answer::from(refusal).into_response(),
    };
    let upgrading = hyper::upgrade::on(&mut req);
    let (codec, session) = (agreed.codec, agreed.session);
    tokio::spawn(async move {
        let upgraded = match upgrading.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade through the HTTP server failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<hyper_util::rt::TokioIo<TrackedStream>>() else {
            tracing::error!("an upgraded connection is not the gateway's own stream; closed");
            return;
        };
        let (stream, early) = (parts.io.into_inner(), parts.read_buf.to_vec());
        conn::serve(h, stream, String::new(), early, codec, session).await
    });
    // `extensions` is a whole response header line: keep its value.
    let extensions = agreed.extensions.split_once(':').map(|(_, v)| v.trim());
    let headers = [
        (header::UPGRADE, "websocket"),
        (header::CONNECTION, "Upgrade"),
        (header::SEC_WEBSOCKET_ACCEPT, agreed.accept.as_str()),
    ];
    let extensions = extensions.map(|v| (header::SEC_WEBSOCKET_EXTENSIONS, v));
    (
        StatusCode::SWITCHING_PROTOCOLS,
        headers,
        AppendHeaders(extensions),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_joins_every_frame_of_the_queue() {
        let mut two = BytesMut::new();
        two.extend_from_slice(&packet::event_raw("a", "1"));
        two.extend_from_slice(&packet::event_raw("b", "2"));
        let queued = vec![
            (packet::ping(), 0),
            (two.freeze(), 2),
            (frame::encode(frame::Opcode::Binary, &[1, 2, 3]), 1),
        ];
        assert_eq!(
            &payload(&queued)[..],
            b"2\x1e42[\"a\",1]\x1e42[\"b\",2]\x1ebAQID"
        );
    }

    #[test]
    fn queries_are_read_like_the_reference_server() {
        let q = "EIO=4&transport=polling&t=abc&sid=xyz&sids=no";
        assert_eq!(param(q, "EIO"), Some("4"));
        assert_eq!(param(q, "transport"), Some("polling"));
        assert_eq!(param(q, "sid"), Some("xyz"));
        assert_eq!(param("", "sid"), None);
    }
}
