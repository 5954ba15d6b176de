//! The gateway's own HTTP/1.1 for Engine.IO long-polling: a connection whose next request is a
//! long-polling GET or POST is served here, one request at a time, so a pending GET costs a
//! task and the session, not an HTTP server's read and write buffers. At every request
//! boundary the next request line is peeked at again: a WebSocket handshake is upgraded on the
//! raw connection ([`super::upgrade`]) and anything else (the HTTP API, a preflight, a request
//! of another kind through a proxy's shared upstream connection) hands the connection, with
//! nothing read from it, to the HTTP server. Answers are [`polling::Answer`]s, the same as
//! through the HTTP server, with the same CORS headers for browser pages.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::polling::{self, Answer, Step};
use super::Handler;
use crate::drain::TrackedStream;

/// How long a kept-alive connection may stay idle between two requests: longer than a proxy
/// keeps its idle upstream connections (nginx template: 60 s), so the proxy closes them first.
pub(super) const IDLE: Duration = Duration::from_secs(75);
/// How long a request may take to arrive once it started.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One request's head, owned (the buffer it was read into is gone by the time it is answered).
struct Head {
    method: Method,
    query: String,
    origin: Option<Vec<u8>>,
    content_length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

/// Serves one long-polling request on `stream`; whether the connection may serve another
/// (the caller waits up to [`IDLE`] for it).
pub async fn serve<H: Handler>(h: &Arc<H>, stream: &mut TrackedStream) -> bool {
    let too_large = "the request head is larger than 8 KiB";
    let read = super::read_head(stream, too_large)
        .await
        .map_err(Answer::from);
    let head = match read.and_then(|buf| buf.map(|buf| parse_head(&buf)).transpose()) {
        Ok(Some(head)) => head,
        Ok(None) => return false,
        Err(answer) => {
            let _ = write_answer(&**h, stream, None, false, answer).await;
            return false;
        }
    };
    let (answer, keep) = answer(h, stream, &head).await;
    let keep = keep && head.keep_alive;
    let origin = head.origin.as_deref();
    let written = write_answer(&**h, stream, origin, keep, answer).await;
    if written.is_err() || !keep {
        let _ = stream.shutdown().await;
        return false;
    }
    true
}

/// The answer to one request, and whether the connection may serve another.
async fn answer<H: Handler>(h: &Arc<H>, stream: &mut TrackedStream, head: &Head) -> (Answer, bool) {
    match polling::step(h, &head.method, &head.query) {
        Err(answer) => {
            // A body nobody reads would be taken for the next request.
            let clean = head.content_length.unwrap_or(0) == 0 && !head.chunked;
            (answer, clean)
        }
        Ok(Step::Get(conn)) => (polling::poll(&conn, gone(stream.tcp())).await, true),
        Ok(Step::Post(conn)) => {
            let max = h.settings().max_packet as usize;
            // Without Content-Length and Transfer-Encoding a request has no body.
            if head.chunked {
                let why = "a long-polling POST needs a Content-Length";
                let r = super::refuse(StatusCode::LENGTH_REQUIRED, "bad_request", why);
                return (r.into(), false);
            }
            let len = head.content_length.unwrap_or(0);
            if len > max {
                return (polling::oversized(&conn, max), false);
            }
            let mut body = vec![0u8; len];
            // A client that asked first is told to send; one gone by then sends nothing either.
            let asked = !head.expect_continue || stream.write_all(CONTINUE).await.is_ok();
            let read = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut body));
            if asked && matches!(read.await, Ok(Ok(_))) {
                (polling::post(&**h, &conn, &body), true)
            } else {
                conn.end_polling("transport_error");
                let why = "the request body did not arrive in time";
                let r = super::refuse(StatusCode::BAD_REQUEST, "bad_request", why);
                (r.into(), false)
            }
        }
        // The request line said long-polling; only a forged query gets here.
        Ok(Step::WebSocket) => (polling::EioError::BadRequest.answer(), false),
    }
}

/// Completes when the client closes the connection (or it breaks).
async fn gone(tcp: &TcpStream) {
    let mut byte = [0u8; 1];
    match tcp.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        // The client sent more while its GET waits (a pipelined request): it is read after
        // the answer; until then nothing tells us it left.
        Ok(_) => std::future::pending().await,
    }
}

fn parse_head(buf: &[u8]) -> Result<Head, Answer> {
    let bad = || {
        Answer::from(super::refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be parsed as HTTP/1.1",
        ))
    };
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(buf) else {
        return Err(bad());
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| bad())?;
    let query = req
        .path
        .and_then(|p| p.split_once('?'))
        .map_or("", |(_, q)| q)
        .to_owned();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        let value = String::from_utf8_lossy(header(name).unwrap_or_default());
        value
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let content_length = header("content-length")
        .map(|v| String::from_utf8_lossy(v).trim().parse().map_err(|_| bad()))
        .transpose()?;
    let keep_alive = if req.version == Some(0) {
        has_token("connection", "keep-alive")
    } else {
        !has_token("connection", "close")
    };
    Ok(Head {
        method,
        query,
        origin: header("origin").map(<[u8]>::to_vec),
        content_length,
        chunked: header("transfer-encoding").is_some(),
        keep_alive,
        expect_continue: has_token("expect", "100-continue"),
    })
}

/// The status line and the content headers of `answer`.
pub(super) fn head(answer: &Answer) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        answer.status.as_str(),
        answer.status.canonical_reason().unwrap_or(""),
        answer.content_type,
        answer.body.len()
    );
    if let Some(version) = answer.refused_version() {
        head += &format!("Sec-WebSocket-Version: {version}\r\n");
    }
    head
}

/// Writes `answer` with the CORS headers a page of `origin` gets.
async fn write_answer<H: Handler>(
    h: &H,
    stream: &mut TrackedStream,
    origin: Option<&[u8]>,
    keep: bool,
    answer: Answer,
) -> std::io::Result<()> {
    let mut head = head(&answer);
    if h.cors_open() {
        head.push_str(
            "Vary: origin, access-control-request-method, access-control-request-headers\r\n",
        );
        if let Some(o) = origin.filter(|o| h.cors_allows(o)) {
            // An allowed origin is ASCII (checked when the list was read).
            head.push_str("Access-Control-Allow-Origin: ");
            head.push_str(&String::from_utf8_lossy(o));
            head.push_str("\r\nAccess-Control-Allow-Credentials: true\r\n");
        }
    }
    if !keep {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(&[head.as_bytes(), &answer.body].concat())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_say_what_the_request_needs() {
        let h = parse_head(
            b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nOrigin: https://app.test\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.query, "EIO=4&transport=polling&sid=x");
        assert_eq!(h.content_length, Some(12));
        assert_eq!(h.origin.as_deref(), Some(&b"https://app.test"[..]));
        assert!(h.keep_alive && !h.chunked && !h.expect_continue);
        let h = parse_head(b"GET /socket.io/?EIO=4 HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"GET /socket.io/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
