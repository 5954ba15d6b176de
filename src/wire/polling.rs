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

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use super::codec::Codec;
use super::conn::{self, Conn, Polled};
use super::frame;
use super::{msgpack, packet, Handler};
use crate::drain::TrackedStream;
use crate::metrics;

/// Separator of the packets of one long-polling payload.
const SEPARATOR: u8 = 0x1e;
/// Longest a GET waits while a WebSocket is taking the session over.
const UPGRADING_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// The opcode bits of a binary WebSocket frame.
const BINARY_OPCODE: u8 = 0x2;

/// Long-polling sessions (and the sessions that upgraded from it) by session id.
pub struct Polls<U> {
    map: Mutex<HashMap<Box<str>, Arc<Conn<U>>>>,
}

impl<U> Default for Polls<U> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<U: Send + Sync + 'static> Polls<U> {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Conn<U>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
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
    /// client sees a lost transport and reconnects elsewhere); returns how many.
    pub fn close_all(&self) -> usize {
        let all: Vec<_> = self.lock().values().cloned().collect();
        all.iter()
            .filter(|c| c.transport() == "polling")
            .map(|c| c.end_polling("transport_close"))
            .count()
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
    fn parts(self) -> (u8, &'static str, &'static str) {
        match self {
            EioError::UnknownTransport => (0, "Transport unknown", "unknown_transport"),
            EioError::UnknownSid => (1, "Session ID unknown", "unknown_sid"),
            EioError::BadHandshakeMethod => (2, "Bad handshake method", "bad_handshake_method"),
            EioError::BadRequest => (3, "Bad request", "bad_request"),
            EioError::UnsupportedProtocolVersion => (
                5,
                "Unsupported protocol version",
                "unsupported_protocol_version",
            ),
        }
    }
}

impl IntoResponse for EioError {
    fn into_response(self) -> Response {
        let (code, message, label) = self.parts();
        ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => label).increment(1);
        tracing::debug!(code, message, "Engine.IO request refused");
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// The query parameters Engine.IO uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Self {
        let mut q = Query::default();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "EIO" => q.eio = Some(v),
                "transport" => q.transport = Some(v),
                "sid" => q.sid = Some(v),
                _ => {}
            }
        }
        q
    }
}

/// Serves one `/socket.io/` request of the HTTP server.
pub async fn handle<H: Handler>(h: Arc<H>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    let q = Query::parse(&query);
    if q.eio != Some("4") {
        return EioError::UnsupportedProtocolVersion.into_response();
    }
    let msgpack = match super::wants_msgpack(&query) {
        Ok(m) => m,
        Err(message) => {
            return crate::wire::refusal_response(super::refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_parser",
                message,
            ))
        }
    };
    match q.transport {
        Some("polling") => {}
        Some("websocket") => return websocket(h, req, q.sid).await,
        _ => return EioError::UnknownTransport.into_response(),
    }
    let Some(sid) = q.sid else {
        if req.method() != Method::GET {
            return EioError::BadHandshakeMethod.into_response();
        }
        if let Err(refusal) = h.admit(None) {
            return crate::wire::refusal_response(refusal);
        }
        let (_, open) = conn::start_polling(&h, Codec::new(msgpack, None));
        return payload_response(payload(&[(open, 0)]));
    };
    let Some(conn) = h.polls().get(sid) else {
        return EioError::UnknownSid.into_response();
    };
    if conn.transport() != "polling" {
        return EioError::BadRequest.into_response();
    }
    match *req.method() {
        Method::GET => poll(&conn).await,
        Method::POST => post(&*h, &conn, req).await,
        _ => EioError::BadRequest.into_response(),
    }
}

/// A GET: waits until something is queued (the heartbeat's ping at the latest) and answers
/// with all of it.
async fn poll<U: Send + Sync + 'static>(conn: &Arc<Conn<U>>) -> Response {
    let Some(ready) = conn.begin_get() else {
        if conn.transport() == "polling" {
            tracing::debug!(
                sid = conn.sid(),
                "a second GET while one is pending ends the session"
            );
            conn.end_polling("transport_error");
        }
        return EioError::BadRequest.into_response();
    };
    let _pending = Pending(conn);
    let mut waited_upgrading = false;
    loop {
        let notified = ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match conn.poll_now() {
            Polled::Frames(mut taken) => return payload_response(payload(taken.make_contiguous())),
            Polled::Closed => return payload_response(Bytes::from_static(b"1")),
            Polled::Noop => return payload_response(Bytes::from_static(b"6")),
            Polled::Wait { upgrading: false } => notified.await,
            // A GET that came while the client was about to pause polling (sent before it got
            // `3probe`): answered soon, so the pause is not held up until the next ping; a
            // client that never sends the upgrade packet polls ten times a second at most.
            Polled::Wait { upgrading: true } if waited_upgrading => {
                return payload_response(Bytes::from_static(b"6"))
            }
            Polled::Wait { upgrading: true } => {
                waited_upgrading = tokio::time::timeout(UPGRADING_POLL, notified)
                    .await
                    .is_err();
            }
        }
    }
}

/// Clears the session's pending GET when it ends (answered, or dropped by a client that left).
struct Pending<'a, U: Send + Sync + 'static>(&'a Arc<Conn<U>>);

impl<U: Send + Sync + 'static> Drop for Pending<'_, U> {
    fn drop(&mut self) {
        self.0.end_get();
    }
}

/// A POST: the client's packets, joined by `\x1e`.
async fn post<H: Handler>(h: &H, conn: &Arc<Conn<H::User>>, req: Request) -> Response {
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
    let Some(body) = body else {
        ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => "payload_too_large")
            .increment(1);
        tracing::debug!(
            sid = conn.sid(),
            max,
            "a POST larger than maxPayload ends the session"
        );
        conn.end_polling("transport_error");
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "code": 3, "message": "Payload too large" }).to_string(),
        )
            .into_response();
    };
    let msgpack = conn.codec().msgpack;
    // An empty body carries no packet (the reference server would call it a parse error; a
    // client gains nothing from losing its session over it).
    let parts = body.split(|b| *b == SEPARATOR).filter(|_| !body.is_empty());
    for part in parts {
        let parsed = match part.split_first() {
            Some((b'b', data)) if msgpack => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| packet::PacketError("bad_base64"))
                .and_then(|bytes| msgpack::parse(&bytes)),
            _ => std::str::from_utf8(part)
                .map_err(|_| packet::PacketError("invalid_utf8"))
                .and_then(packet::parse),
        };
        let handled = match parsed {
            Ok(p) => conn.on_packet(h, p),
            Err(e) => Err(conn::Stop::protocol("bad_packet", 1002, e.0)),
        };
        match handled {
            Ok(true) => conn.polled_pong(),
            Ok(false) => {}
            Err(stop) => {
                conn.end_polling(stop.reason);
                return if stop.reason == "bad_packet" {
                    EioError::BadRequest.into_response()
                } else {
                    ok()
                };
            }
        }
    }
    ok()
}

fn ok() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html")],
        Bytes::from_static(b"ok"),
    )
        .into_response()
}

fn payload_response(body: Bytes) -> Response {
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    res
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
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .as_bytes(),
                );
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
async fn websocket<H: Handler>(h: Arc<H>, mut req: Request, sid: Option<&str>) -> Response {
    let conn = match sid {
        Some(sid) => match h.polls().get(sid) {
            Some(c) if c.transport() == "polling" => Some(c),
            Some(_) => return EioError::BadRequest.into_response(),
            None => return EioError::UnknownSid.into_response(),
        },
        None => None,
    };
    let header = |name: header::HeaderName| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let upgrade = header(header::UPGRADE)
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"));
    let key = header(header::SEC_WEBSOCKET_KEY).into_iter().next();
    let (Some(key), true) = (key, upgrade) else {
        return EioError::BadRequest.into_response();
    };
    if header(header::SEC_WEBSOCKET_VERSION)
        .first()
        .map(String::as_str)
        != Some("13")
    {
        return EioError::BadRequest.into_response();
    }
    if conn.is_none() {
        if let Err(refusal) = h.admit(None) {
            return crate::wire::refusal_response(refusal);
        }
    }
    let offers = header(header::SEC_WEBSOCKET_EXTENSIONS);
    let settings = h.settings();
    let accepted = settings.compression_min.and_then(|min| {
        super::deflate::negotiate(offers.iter().map(String::as_str)).map(|line| (line, min))
    });
    let msgpack = match &conn {
        Some(c) => c.codec().msgpack,
        None => super::wants_msgpack(req.uri().query().unwrap_or("")).unwrap_or(false),
    };
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let upgrading = hyper::upgrade::on(&mut req);
    let max = settings.max_packet as usize;
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
        let stream = parts.io.into_inner();
        let early = parts.read_buf.to_vec();
        let deflate = accepted.map(|(_, min)| min);
        match conn {
            Some(c) => {
                c.take_over(stream, String::new(), early, deflate, max)
                    .await
            }
            None => {
                conn::serve(
                    h,
                    stream,
                    String::new(),
                    early,
                    Codec::new(msgpack, deflate),
                )
                .await
            }
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some((line, _)) = accepted {
        // `line` is a whole response header line: keep its value.
        if let Some(value) = line
            .split_once(':')
            .map(|(_, v)| v.trim())
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
        }
    }
    res
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
        let q = Query::parse("EIO=4&transport=polling&t=abc&sid=xyz");
        assert_eq!(q.eio, Some("4"));
        assert_eq!(q.transport, Some("polling"));
        assert_eq!(q.sid, Some("xyz"));
        assert_eq!(Query::parse(""), Query::default());
    }
}
