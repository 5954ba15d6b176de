//! Engine.IO v4 long-polling for `clients --transport polling|upgrade`.
//!
//! A minimal HTTP/1.1 client on one kept-alive TCP connection per Socket.IO connection, written
//! here rather than taken from reqwest/hyper: a pooled client per connection costs tens of
//! kilobytes and a task or two, which 10,000 connections in one generator cannot afford. It only
//! ever has one request in flight (the stock client's long-poll GET, or a POST), reads
//! `Content-Length` and chunked bodies, and reopens the connection when the server asks to
//! close it. Packets in a body are joined by `\x1e` (the record separator of Engine.IO v4).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::transport::{connect_from, io_err, ConnError};

/// Engine.IO v4's packet separator in a polling payload.
pub const SEPARATOR: u8 = 0x1e;
/// The Engine.IO path with the query every request carries.
const BASE: &str = "/socket.io/?EIO=4&transport=polling";
/// Most header lines a response may have.
const MAX_HEADERS: usize = 32;
/// Longest response head (status line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The whole body (de-chunked).
    pub body: Bytes,
}

/// What the head of a response says about its body.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// No length: the body runs to the end of the connection.
    UntilClose,
}

/// An HTTP/1.1 connection to one server, one request at a time.
pub struct Http {
    stream: Option<TcpStream>,
    buf: BytesMut,
    host: String,
    source: Option<IpAddr>,
    target: SocketAddr,
    read_chunk: usize,
}

impl Http {
    /// A connection to `target` from `source` (opened on the first request).
    pub fn new(source: Option<IpAddr>, target: SocketAddr, read_chunk: usize) -> Self {
        Self {
            stream: None,
            buf: BytesMut::new(),
            host: target.to_string(),
            source,
            target,
            read_chunk: read_chunk.max(256),
        }
    }

    /// Where requests go.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The source address connections are opened from.
    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// Writes one request (opening the connection first if there is none); the response is read
    /// with [`Http::read_response`].
    pub async fn send_request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), ConnError> {
        if self.stream.is_none() {
            self.stream = Some(connect_from(self.source, self.target).await?);
            self.buf.clear();
        }
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n",
            host = self.host
        );
        if method != "GET" {
            req.push_str("Content-Type: text/plain;charset=UTF-8\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io_err("no connection"))?;
        if let Err(e) = stream.write_all(&bytes).await {
            self.stream = None;
            return Err(io_err(format!("write {method}: {e}")));
        }
        Ok(())
    }

    /// Reads the response to the request in flight.
    pub async fn read_response(&mut self) -> Result<Response, ConnError> {
        match self.read_response_inner().await {
            Ok((response, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// One request and its response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, ConnError> {
        self.send_request(method, path, body).await?;
        self.read_response().await
    }

    /// Reads more bytes into the buffer; an error at the end of the stream.
    async fn fill(&mut self) -> Result<(), ConnError> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io_err("no connection"))?;
        self.buf.reserve(self.read_chunk);
        match stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(io_err("eof")),
            Ok(_) => Ok(()),
            Err(e) => Err(io_err(format!("read: {e}"))),
        }
    }

    /// The response and whether the connection stays open after it.
    async fn read_response_inner(&mut self) -> Result<(Response, bool), ConnError> {
        let (status, framing, keep) = loop {
            match parse_head(&self.buf)? {
                Some((head_len, status, framing, keep)) => {
                    self.buf.advance(head_len);
                    // Informational answers (100 Continue) precede the real one.
                    if (100..200).contains(&status) {
                        continue;
                    }
                    break (status, framing, keep);
                }
                None if self.buf.len() > MAX_HEAD => {
                    return Err(ConnError::Protocol("response head too long".into()))
                }
                None => self.fill().await?,
            }
        };
        let body = match framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => self.read_chunked().await?,
            Framing::UntilClose => {
                while self.fill().await.is_ok() {}
                self.buf.split().freeze()
            }
        };
        let keep = keep && framing != Framing::UntilClose;
        Ok((Response { status, body }, keep))
    }

    async fn read_chunked(&mut self) -> Result<Bytes, ConnError> {
        let mut body = BytesMut::new();
        loop {
            let line_end = loop {
                if let Some(i) = find_crlf(&self.buf) {
                    break i;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(ConnError::Protocol("chunk size line too long".into()));
                }
                self.fill().await?;
            };
            let size = chunk_size(&self.buf[..line_end])?;
            self.buf.advance(line_end + 2);
            if size == 0 {
                // Trailers, if any, then the empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find_crlf(&self.buf) {
                            break i;
                        }
                        self.fill().await?;
                    };
                    self.buf.advance(end + 2);
                    if end == 0 {
                        return Ok(body.freeze());
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn chunk_size(line: &[u8]) -> Result<usize, ConnError> {
    let line = std::str::from_utf8(line).unwrap_or_default();
    let hex = line.split(';').next().unwrap_or_default().trim();
    usize::from_str_radix(hex, 16)
        .map_err(|_| ConnError::Protocol(format!("bad chunk size {line:.20}")))
}

/// Parses a complete response head: (its length, status, framing, keep-alive).
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, Framing, bool)>, ConnError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ConnError::Protocol(format!("bad response: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    // HTTP/1.1 keeps the connection by default, 1.0 closes it.
    let mut keep = resp.version == Some(1);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or_default().trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| ConnError::Protocol(format!("bad content-length {value:.20}")))?;
            if framing != Framing::Chunked {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep = false;
            } else if v.contains("keep-alive") {
                keep = true;
            }
        }
    }
    // A status without a body (204, 304) has none, whatever it says.
    if status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some((len, status, framing, keep)))
}

/// Splits a polling payload into its packets.
pub fn split_payload(body: &Bytes) -> Result<Vec<Utf8Bytes>, ConnError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|b| *b == SEPARATOR)
        .map(|part| {
            let start = part.as_ptr() as usize - body.as_ptr() as usize;
            Utf8Bytes::try_from(body.slice(start..start + part.len()))
                .map_err(|_| ConnError::Protocol("payload is not UTF-8".into()))
        })
        .collect()
}

/// One Engine.IO session on long-polling.
pub struct Polling {
    http: Http,
    /// Path and query of every request of the session (with its `sid`).
    path: String,
    sid: String,
}

/// Fields of the open packet the generator uses.
fn open_sid(packet: &str) -> Result<String, ConnError> {
    let json = packet
        .strip_prefix('0')
        .ok_or_else(|| ConnError::Protocol(format!("expected open packet, got {packet:.60}")))?;
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| ConnError::Protocol(format!("open packet: {e}")))?;
    v.get("sid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ConnError::Protocol("open packet without sid".into()))
}

fn status_error(what: &str, r: &Response) -> ConnError {
    let body = String::from_utf8_lossy(&r.body);
    ConnError::Protocol(format!("{what}: HTTP {} {body:.100}", r.status))
}

impl Polling {
    /// The Engine.IO handshake (`GET` without `sid`). The packets of the answer, the open
    /// packet first, go to `pending`.
    pub async fn open(
        source: Option<IpAddr>,
        target: SocketAddr,
        read_chunk: usize,
        pending: &mut VecDeque<Utf8Bytes>,
    ) -> Result<Polling, ConnError> {
        let mut http = Http::new(source, target, read_chunk);
        let r = http.request("GET", BASE, b"").await?;
        if r.status != 200 {
            return Err(status_error("handshake", &r));
        }
        let packets = split_payload(&r.body)?;
        let first = packets
            .first()
            .ok_or_else(|| ConnError::Protocol("empty handshake answer".into()))?;
        let sid = open_sid(first)?;
        pending.extend(packets);
        Ok(Polling {
            http,
            path: format!("{BASE}&sid={sid}"),
            sid,
        })
    }

    /// The session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The HTTP connection's source address and target.
    pub fn endpoints(&self) -> (Option<IpAddr>, SocketAddr) {
        (self.http.source(), self.http.target())
    }

    /// Sends packets (joined by `\x1e`) in one POST.
    pub async fn post(&mut self, packets: &[&str]) -> Result<(), ConnError> {
        let body = packets.join("\u{1e}");
        let r = self
            .http
            .request("POST", &self.path, body.as_bytes())
            .await?;
        if r.status != 200 {
            return Err(status_error("POST", &r));
        }
        Ok(())
    }

    /// Writes a long-poll GET without waiting for its answer.
    pub async fn start_poll(&mut self) -> Result<(), ConnError> {
        self.http.send_request("GET", &self.path, b"").await
    }

    /// Reads the answer of the GET in flight; its packets go to `pending`.
    pub async fn finish_poll(
        &mut self,
        pending: &mut VecDeque<Utf8Bytes>,
    ) -> Result<(), ConnError> {
        let r = self.http.read_response().await?;
        if r.status != 200 {
            return Err(status_error("GET", &r));
        }
        pending.extend(split_payload(&r.body)?);
        Ok(())
    }

    /// One long-poll: a GET and its packets, into `pending`.
    pub async fn poll(&mut self, pending: &mut VecDeque<Utf8Bytes>) -> Result<(), ConnError> {
        self.start_poll().await?;
        self.finish_poll(pending).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_packets_on_the_record_separator() {
        let body = Bytes::from_static(b"40{\"sid\":\"x\"}\x1e42[\"authenticated\",{}]\x1e2");
        let parts = split_payload(&body).unwrap();
        let parts: Vec<&str> = parts.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            parts,
            ["40{\"sid\":\"x\"}", "42[\"authenticated\",{}]", "2"]
        );
        assert!(split_payload(&Bytes::new()).unwrap().is_empty());
        assert_eq!(split_payload(&Bytes::from_static(b"6")).unwrap(), ["6"]);
    }

    #[test]
    fn reads_response_heads() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        let (len, status, framing, keep) = parse_head(head).unwrap().unwrap();
        assert_eq!((len, status, keep), (head.len() - 2, 200, true));
        assert_eq!(framing, Framing::Length(2));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let (_, _, framing, keep) = parse_head(chunked).unwrap().unwrap();
        assert_eq!((framing, keep), (Framing::Chunked, false));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert_eq!(chunk_size(b"1a;ext=1").unwrap(), 26);
    }

    #[test]
    fn reads_the_sid_of_an_open_packet() {
        let open = r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(open_sid(open).unwrap(), "abc");
        assert!(open_sid("40").is_err());
    }

    /// A chunked answer split across reads, then a kept-alive Content-Length one, on one
    /// connection to a scripted server.
    #[tokio::test]
    async fn reads_chunked_and_sized_bodies_on_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .await
                .unwrap();
            s.flush().await.unwrap();
            tokio::task::yield_now().await;
            s.write_all(b"c\r\n2;x=y\r\nde\r\n0\r\n\r\n").await.unwrap();
            let mut seen = Vec::new();
            while !seen.ends_with(b"hello") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            assert!(seen.starts_with(b"POST /p HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
        });
        let mut http = Http::new(None, addr, 256);
        let r = http.request("GET", "/g", b"").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"abcde"[..]));
        let r = http.request("POST", "/p", b"hello").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        server.await.unwrap();
    }
}
