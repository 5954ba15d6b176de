//! The gateway's own Socket.IO transport for WebSocket sessions opened directly
//! (`transports: ["websocket"]`, the way production clients connect).
//!
//! Every accepted connection's first request line is peeked at: a Socket.IO WebSocket handshake
//! without a session id is upgraded here, on the raw stream, so no HTTP server buffer outlives
//! it; anything else (the HTTP API, long-polling, polling sessions upgrading to WebSocket) goes
//! to the HTTP server untouched. One task per session, no per-socket channel, and relayed
//! events are encoded once and written straight to the socket (see [`conn`]).

pub mod conn;
pub mod frame;
pub mod packet;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use axum::http::StatusCode;

use crate::drain::TrackedStream;
use crate::http::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted for a WebSocket handshake.
const MAX_HEAD: usize = 8192;

/// A connection for the HTTP server, with the client's address.
pub type ToHttp = mpsc::Sender<(TrackedStream, SocketAddr)>;

/// Where a new connection goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A Socket.IO WebSocket handshake: served here.
    WebSocket,
    /// Everything else: the HTTP server.
    Http,
    /// Closed or silent before sending a request line.
    Nowhere,
}

/// Serves one accepted connection: upgrades it here or hands it to the HTTP server.
pub async fn route(st: Arc<AppState>, stream: TrackedStream, addr: SocketAddr, to_http: ToHttp) {
    match classify(&stream).await {
        Route::WebSocket => upgrade(st, stream).await,
        Route::Http => {
            if to_http.send((stream, addr)).await.is_err() {
                tracing::debug!(%addr, "HTTP server stopped; connection dropped");
            }
        }
        Route::Nowhere => {}
    }
}

/// Peeks at the request line without consuming it.
async fn classify(stream: &TrackedStream) -> Route {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.tcp().peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Route::Nowhere,
            Ok(Ok(n)) => n,
        };
        let seen = &buf[..n];
        if let Some(end) = seen.windows(2).position(|w| w == b"\r\n") {
            return classify_line(&seen[..end]);
        }
        if n == buf.len() || (n >= 4 && !seen.starts_with(b"GET ")) {
            return Route::Http;
        }
        // Part of a request line: wait for the rest (rare: it nearly always comes in one piece).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn classify_line(line: &[u8]) -> Route {
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Http;
    };
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return Route::Http;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = || query.split('&');
    if (path == "/socket.io/" || path == "/socket.io")
        && params().any(|kv| kv == "transport=websocket")
        && !params().any(|kv| kv.starts_with("sid="))
    {
        Route::WebSocket
    } else {
        Route::Http
    }
}

/// A new Engine.IO session id: 20 url-safe random characters.
pub fn new_sid() -> String {
    use base64::Engine;
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A refused handshake: status, stable code and what to fix.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    extra: &'static str,
}

fn refuse(status: StatusCode, code: &'static str, message: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        message,
        extra: "",
    }
}

/// What the handshake request must carry; `Ok` holds the `Sec-WebSocket-Key`.
fn check_request(req: &httparse::Request<'_, '_>, st: &AppState) -> Result<String, Refusal> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let query = req
        .path
        .and_then(|p| p.split_once('?'))
        .map_or("", |(_, q)| q);
    if !query.split('&').any(|kv| kv == "EIO=4") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_protocol_version",
            "only Engine.IO 4 (socket.io-client 3 and later) is supported; connect with EIO=4",
        ));
    }
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = header("connection").is_some_and(|v| {
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
    if header("sec-websocket-version") != Some("13") {
        return Err(Refusal {
            extra: "Sec-WebSocket-Version: 13\r\n",
            ..refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_websocket_version",
                "only WebSocket version 13 is supported",
            )
        });
    }
    let Some(key) = header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "missing_websocket_key",
            "the Sec-WebSocket-Key header is missing",
        ));
    };
    let origin = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("origin"))
        .map(|h| h.value);
    if !st.config.cors_origins.admits_websocket(origin) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            crate::auth::origins::REFUSED_CODE,
            crate::auth::origins::REFUSED_MESSAGE,
        ));
    }
    if st.is_draining() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this gateway is shutting down; connect to another one",
        ));
    }
    Ok(key.trim().to_owned())
}

/// Reads the request head, answers the upgrade (or refuses it with a JSON error) and runs the
/// session.
async fn upgrade(st: Arc<AppState>, mut stream: TrackedStream) {
    let mut head = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        head.extend_from_slice(&chunk[..n]);
        let end = head.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(at) = end.filter(|at| at + 4 <= MAX_HEAD) {
            break at + 4;
        }
        if end.is_some() || head.len() > MAX_HEAD {
            let r = refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_too_large",
                "the handshake request head is larger than 8 KiB",
            );
            return answer_refusal(stream, r).await;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let checked = match req.parse(&head[..end]) {
        Ok(httparse::Status::Complete(_)) => check_request(&req, &st),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the handshake request could not be parsed as HTTP/1.1",
        )),
    };
    let key = match checked {
        Ok(key) => key,
        Err(r) => return answer_refusal(stream, r).await,
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let early = head[end..].to_vec();
    // The session runs in a task of its own: this one, sized for the handshake's buffers, ends
    // here instead of staying alive (and allocated) for the whole session. The 101 goes out
    // with the Engine.IO open packet, in one write.
    tokio::spawn(conn::serve(st, stream, response, early));
}

async fn answer_refusal(mut stream: TrackedStream, r: Refusal) {
    ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => r.code).increment(1);
    tracing::debug!(code = r.code, "WebSocket handshake refused");
    let body = ApiError::new(r.status, r.code, r.message)
        .body()
        .to_string();
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}",
        r.status.as_str(),
        r.status.canonical_reason().unwrap_or(""),
        body.len(),
        r.extra,
        body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_websocket_handshakes_are_taken() {
        let ws = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1";
        assert_eq!(classify_line(ws), Route::WebSocket);
        assert_eq!(
            classify_line(b"GET /socket.io?transport=websocket&EIO=4 HTTP/1.1"),
            Route::WebSocket
        );
        for line in [
            &b"GET /socket.io/?EIO=4&transport=websocket&sid=abc HTTP/1.1"[..],
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1",
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
