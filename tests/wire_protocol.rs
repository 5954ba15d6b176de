//! The gateway's own WebSocket transport, driven frame by frame over a real TCP connection:
//! the upgrade and its refusals, Engine.IO and Socket.IO packets, fragmentation, control
//! frames, the heartbeat, protocol violations, many events arriving in one read, and
//! permessage-deflate (negotiation, shared compressed frames, bombs and corrupt streams).

mod common;

use std::time::Duration;

use common::{batch_created, metric, token, Gateway, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WS_PATH: &str = "/socket.io/?EIO=4&transport=websocket";
/// What Chromium offers.
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
/// The gateway's answer to an acceptable offer.
const ACCEPTED: &str = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";

/// A WebSocket client that writes and reads raw frames.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server (a compressed one already inflated, `rsv1` telling it was).
#[derive(Debug)]
struct Frame {
    opcode: u8,
    rsv1: bool,
    /// Bytes the frame took on the wire.
    wire_len: usize,
    payload: Vec<u8>,
}

/// DEFLATE-compresses `data` as a permessage-deflate sender does for a whole message (sync
/// flush, tail removed).
fn deflate(c: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
    let mut out = deflate_part(c, data);
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// The compressed bytes of one fragment of a longer message (the stream goes on after it).
fn deflate_part(c: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.len() < out.capacity(), "room to finish the flush");
    out
}

/// A compressor as a client without context takeover uses for each message.
fn compressor() -> flate2::Compress {
    flate2::Compress::new(flate2::Compression::default(), false)
}

/// Inflates one compressed message from the server.
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    flate2::Decompress::new(false)
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("the server's compressed frame inflates on its own");
    out
}

impl Frame {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("server text is UTF-8")
    }

    fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Sends a request head and reads the response head (status line and headers) and body.
async fn http_exchange(gw: &Gateway, head: &str) -> (u16, String, TcpStream, Vec<u8>) {
    let tcp = TcpStream::connect(gw.public).await.expect("connect");
    http_exchange_on(tcp, head).await
}

/// [`http_exchange`] on a connection the caller made.
async fn http_exchange_on(mut tcp: TcpStream, head: &str) -> (u16, String, TcpStream, Vec<u8>) {
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().expect("status code");
    (status, head, tcp, buf[end..].to_vec())
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Reads a refusal's JSON body (`Content-Length` bytes, until the server closes).
async fn body_of(mut tcp: TcpStream, mut got: Vec<u8>) -> Value {
    let _ = timeout(WAIT, tcp.read_to_end(&mut got)).await;
    serde_json::from_slice(&got).unwrap_or_else(|_| panic!("JSON body: {got:?}"))
}

impl RawWs {
    async fn open(gw: &Gateway) -> RawWs {
        RawWs::open_with(gw, "").await.0
    }

    /// Opens a session with `extra` request headers; returns it and the response head.
    async fn open_with(gw: &Gateway, extra: &str) -> (RawWs, String) {
        let (status, head, tcp, rest) = http_exchange(
            gw,
            &upgrade_request(WS_PATH, &format!("Sec-WebSocket-Version: 13\r\n{extra}")),
        )
        .await;
        assert_eq!(status, 101, "{head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "RFC 6455 accept key: {head}"
        );
        (RawWs { tcp, buf: rest }, head)
    }

    /// Like [`RawWs::connect`] on a session that offered permessage-deflate (and got it); the
    /// connect packet goes compressed.
    async fn connect_deflate(gw: &Gateway, auth: Value) -> RawWs {
        let (mut ws, head) = RawWs::open_with(gw, OFFER).await;
        assert!(head.contains(ACCEPTED), "{head}");
        assert!(ws.recv_text().await.starts_with("0{"));
        let connect = deflate(&mut compressor(), format!("40{auth}").as_bytes());
        ws.send_frame(0xc1, &connect, true).await;
        let connected = ws.recv_text().await;
        assert!(connected.starts_with("40{\"sid\":"), "{connected}");
        ws
    }

    /// Opens a session and connects to `/` with `auth`; returns the Engine.IO open packet.
    async fn connect(gw: &Gateway, auth: Value) -> (RawWs, Value) {
        let mut ws = RawWs::open(gw).await;
        let open = ws.recv_text().await;
        let open: Value =
            serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("open JSON");
        ws.send_text(&format!("40{auth}")).await;
        let connected = ws.recv_text().await;
        assert!(connected.starts_with("40{\"sid\":"), "{connected}");
        (ws, open)
    }

    async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mask = [0x9a, 0x1b, 0x2c, 0x3d];
        let mut out = vec![first];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(m | n as u8),
            n @ 126..=65535 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        } else {
            out.extend_from_slice(payload);
        }
        self.tcp.write_all(&out).await.unwrap();
    }

    async fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes(), true).await;
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let len = (self.buf[1] & 0x7f) as usize;
                let (len, at) = match len {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                if len != usize::MAX && self.buf.len() >= at + len {
                    let rsv1 = self.buf[0] & 0x40 != 0;
                    let payload = &self.buf[at..at + len];
                    let frame = Frame {
                        opcode: self.buf[0] & 0x0f,
                        rsv1,
                        wire_len: at + len,
                        payload: if rsv1 {
                            inflate(payload)
                        } else {
                            payload.to_vec()
                        },
                    };
                    self.buf.drain(..at + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text frame (answering Engine.IO pings on the way).
    async fn recv_text(&mut self) -> String {
        loop {
            let f = self.recv().await.expect("connection open");
            assert_eq!(f.opcode, 1, "expected text, got {f:?}");
            if f.text() == "2" {
                self.send_text("3").await;
                continue;
            }
            return f.text().to_string();
        }
    }

    /// Reads until the server closes; returns the close frame's code if one came.
    async fn until_closed(&mut self) -> Option<u16> {
        let mut code = None;
        while let Some(f) = self.recv().await {
            if f.opcode == 8 {
                code = f.close_code();
            }
        }
        code
    }
}

/// The event name and first argument of a `42[...]` packet.
fn event_of(text: &str) -> (String, Value) {
    let body = text
        .strip_prefix("42")
        .unwrap_or_else(|| panic!("event: {text}"));
    let v: Value = serde_json::from_str(body).unwrap();
    (v[0].as_str().unwrap().to_string(), v[1].clone())
}

#[tokio::test]
async fn handshake_refusals_say_what_to_fix() {
    let gw = Gateway::start(&[]);
    let cases = [
        (
            upgrade_request(
                "/socket.io/?EIO=3&transport=websocket",
                "Sec-WebSocket-Version: 13\r\n",
            ),
            400,
            "unsupported_protocol_version",
        ),
        (
            format!("GET {WS_PATH} HTTP/1.1\r\nHost: gw\r\nSec-WebSocket-Version: 13\r\n\r\n"),
            400,
            "not_a_websocket_upgrade",
        ),
        (
            upgrade_request(WS_PATH, "Sec-WebSocket-Version: 8\r\n"),
            426,
            "unsupported_websocket_version",
        ),
        (
            format!(
                "GET {WS_PATH} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            400,
            "missing_websocket_key",
        ),
        (
            upgrade_request(
                WS_PATH,
                &format!(
                    "Sec-WebSocket-Version: 13\r\nX-Big: {}\r\n",
                    "a".repeat(9000)
                ),
            ),
            431,
            "request_too_large",
        ),
        (
            upgrade_request(
                "/socket.io/?EIO=4&transport=websocket&parser=cbor",
                "Sec-WebSocket-Version: 13\r\n",
            ),
            400,
            "unsupported_parser",
        ),
    ];
    for (request, status, code) in cases {
        let (got, head, tcp, rest) = http_exchange(&gw, &request).await;
        assert_eq!(got, status, "{code}: {head}");
        if status == 426 {
            assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
        }
        let body = body_of(tcp, rest).await;
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
        let m = gw.metrics().await;
        assert_eq!(
            metric(
                &m,
                "gateway_client_protocol_errors_total",
                &format!("reason=\"{code}\"")
            ),
            1.0,
            "{code} counted"
        );
    }
    // Requests that are not direct WebSocket handshakes still reach the HTTP server.
    assert_eq!(gw.get("/healthz").await.0, 200);
    let (status, body) = gw.get("/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{"), "polling handshake: {body}");
}

#[tokio::test]
async fn packets_fragments_and_control_frames() {
    let gw = Gateway::start(&[]);
    let mut ws = RawWs::open(&gw).await;
    let open = ws.recv_text().await;
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["maxPayload"], 16384);
    assert_eq!(open["sid"].as_str().unwrap().len(), 20);

    // An event before the namespace connect is dropped (and counted), not answered.
    ws.send_text(r#"421["ping"]"#).await;

    // A connect packet in three fragments, with a WebSocket ping between two of them.
    let connect = format!("40{}", json!({ "token": token("10", "1", "ADMIN", 600) }));
    let (a, rest) = connect.as_bytes().split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    ws.send_frame(0x01, a, true).await;
    ws.send_frame(0x00, b, true).await;
    ws.send_frame(0x89, b"are you there", true).await;
    ws.send_frame(0x80, c, true).await;
    let pong = ws.recv().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (10, &b"are you there"[..])
    );
    let connected = ws.recv_text().await;
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");
    let (name, auth) = event_of(&ws.recv_text().await);
    assert_eq!(name, "authenticated");
    assert_eq!(auth["userId"], "10");

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gateway_client_protocol_errors_total",
            "reason=\"event_before_connect\""
        ),
        1.0,
        "{m}"
    );
    // Engine.IO ping from the client is answered.
    ws.send_text("2").await;
    assert_eq!(ws.recv_text().await, "3");
    // Another namespace does not exist.
    ws.send_text("40/admin,{}").await;
    assert_eq!(
        ws.recv_text().await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    // An unknown event with an ack is answered with a code.
    ws.send_text(r#"425["subscribe","batch:1"]"#).await;
    let ack = ws.recv_text().await;
    let body: Value = serde_json::from_str(ack.strip_prefix("435").expect("ack 5")).unwrap();
    assert_eq!(body[0]["error"]["code"], "unknown_event", "{ack}");
    // Join with an ack, then 200 events published at once arrive in order.
    ws.send_text(r#"426["join",{"room":"batch:1"}]"#).await;
    let ack = ws.recv_text().await;
    let body: Value = serde_json::from_str(ack.strip_prefix("436").expect("ack 6")).unwrap();
    assert_eq!(body[0]["ok"], true, "{ack}");
    for chunk in 0..2 {
        let events: Vec<Value> = (1..=100)
            .map(|i| batch_created(1, &["batch:1"], chunk * 100 + i))
            .collect();
        let (s, body) = gw
            .post(
                "/v1/publish/batch",
                Some(common::KEY),
                "application/json",
                json!(events).to_string(),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    for want in 1..=200u64 {
        let (name, env) = event_of(&ws.recv_text().await);
        assert_eq!(name, "batch_update");
        assert_eq!(env["offset"], want, "{env}");
    }
    // A client disconnect ends the session and is counted as such.
    ws.send_text("41").await;
    assert_eq!(ws.until_closed().await, None);
    gw.wait_metrics("the client disconnect counted, no connection left", |m| {
        metric(
            m,
            "gateway_disconnects_total",
            "reason=\"client_disconnect\"",
        ) == 1.0
            && metric(m, "gateway_connections", "transport=\"websocket\"") == 0.0
    })
    .await;
}

#[tokio::test]
async fn protocol_violations_close_with_a_code_and_are_counted() {
    let gw = Gateway::start(&[]);
    let auth = json!({ "token": token("10", "1", "ADMIN", 600) });
    let mut good = RawWs::connect(&gw, auth.clone()).await.0;
    assert_eq!(event_of(&good.recv_text().await).0, "authenticated");

    let mut unmasked = RawWs::connect(&gw, auth.clone()).await.0;
    unmasked.send_frame(0x81, b"2", false).await;
    assert_eq!(unmasked.until_closed().await, Some(1002));

    let mut binary = RawWs::connect(&gw, auth.clone()).await.0;
    binary.send_frame(0x82, b"\x01\x02", true).await;
    assert_eq!(binary.until_closed().await, Some(1003));

    let mut bad_json = RawWs::connect(&gw, auth.clone()).await.0;
    bad_json.send_text("42[\"join\"").await;
    assert_eq!(bad_json.until_closed().await, Some(1002));

    let mut too_big = RawWs::connect(&gw, auth.clone()).await.0;
    too_big
        .send_text(&format!("42[\"join\",\"{}\"]", "a".repeat(20_000)))
        .await;
    assert_eq!(too_big.until_closed().await, Some(1009));

    let m = gw.metrics().await;
    for reason in [
        "unmasked_frame",
        "binary_message",
        "bad_json",
        "message_too_big",
    ] {
        assert_eq!(
            metric(
                &m,
                "gateway_client_protocol_errors_total",
                &format!("reason=\"{reason}\"")
            ),
            1.0,
            "{reason}\n{m}"
        );
    }
    // The well-behaved session is untouched.
    good.send_text(r#"421["ping"]"#).await;
    let answers = [good.recv_text().await, good.recv_text().await];
    assert!(
        answers[0].starts_with("431[{\"timestamp\""),
        "the ack comes first: {answers:?}"
    );
    assert_eq!(event_of(&answers[1]).0, "pong");
}

#[tokio::test]
async fn heartbeat_ends_silent_sessions_and_keeps_live_ones() {
    let gw = Gateway::start(&[
        ("GATEWAY_PING_INTERVAL", "200ms"),
        ("GATEWAY_PING_TIMEOUT", "200ms"),
    ]);
    let auth = json!({ "token": token("10", "1", "ADMIN", 600) });
    let (mut live, open) = RawWs::connect(&gw, auth.clone()).await;
    assert_eq!(open["pingInterval"], 200);
    assert_eq!(open["pingTimeout"], 200);
    // The live session answers every ping (recv_text does) from its own task.
    let (names_tx, mut names) = tokio::sync::mpsc::unbounded_channel();
    let live_task = tokio::spawn(async move {
        loop {
            let text = live.recv_text().await;
            if names_tx.send(event_of(&text).0).is_err() {
                return;
            }
        }
    });
    assert_eq!(names.recv().await.unwrap(), "authenticated");
    let (mut silent, _) = RawWs::connect(&gw, auth).await;
    // The silent one never answers a ping: it is closed once the timeout passes.
    let mut pings = 0;
    loop {
        match silent.recv().await {
            Some(f) if f.opcode == 1 && f.text() == "2" => pings += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(pings, 1, "one unanswered ping, then the session ends");
    // The live one outlived it (several heartbeats by now) and still gets events.
    let (s, _) = gw.publish(&batch_created(1, &["institution:1"], 1)).await;
    assert_eq!(s, 200);
    let next = timeout(WAIT, names.recv()).await.expect("event in time");
    assert_eq!(next.as_deref(), Some("batch_update"));
    live_task.abort();
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gateway_disconnects_total",
            "reason=\"heartbeat_timeout\""
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn auth_timeout_sends_the_error_a_disconnect_and_a_close() {
    let gw = Gateway::start(&[("GATEWAY_AUTH_GRACE", "300ms")]);
    let (mut ws, _) = RawWs::connect(&gw, json!({})).await;
    let (name, err) = event_of(&ws.recv_text().await);
    assert_eq!(
        (name.as_str(), &err["code"]),
        ("auth_error", &json!("auth_timeout"))
    );
    assert_eq!(ws.recv_text().await, "41");
    assert_eq!(ws.until_closed().await, Some(1000));
    // A refused connect leaves the session open for another try, as Socket.IO does.
    let mut ws = RawWs::open(&gw).await;
    ws.recv_text().await;
    ws.send_text(r#"40{"token":"not-a-jwt"}"#).await;
    let refused = ws.recv_text().await;
    assert!(refused.starts_with("44{\"message\":\"token_"), "{refused}");
    ws.send_text(&format!(
        "40{}",
        json!({ "token": token("10", "1", "ADMIN", 600) })
    ))
    .await;
    assert!(ws.recv_text().await.starts_with("40{\"sid\""));
    assert_eq!(event_of(&ws.recv_text().await).0, "authenticated");
}

#[tokio::test]
async fn a_draining_gateway_refuses_websocket_handshakes_with_503() {
    let mut gw = Gateway::start(&[
        ("GATEWAY_DRAIN_DELAY", "30s"),
        ("GATEWAY_DRAIN_PERIOD", "30s"),
    ]);
    let auth = json!({ "token": token("10", "1", "ADMIN", 600) });
    let (mut before, _) = RawWs::connect(&gw, auth).await;
    assert_eq!(event_of(&before.recv_text().await).0, "authenticated");
    gw.sigterm();
    gw.wait_readyz(503).await;
    let (status, head, tcp, rest) = http_exchange(
        &gw,
        &upgrade_request(WS_PATH, "Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(body_of(tcp, rest).await["error"]["code"], "draining");
    // The session opened before the drain still gets events during the delay.
    let (s, _) = gw.publish(&batch_created(1, &["institution:1"], 1)).await;
    assert_eq!(s, 200);
    assert_eq!(event_of(&before.recv_text().await).0, "batch_update");
    gw.terminate();
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_cut() {
    let gw = Gateway::start(&[]);
    // A small receive window, so the answers pile up in the gateway rather than in our kernel.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.public).await.unwrap();
    let (status, head, tcp, rest) = http_exchange_on(
        tcp,
        &upgrade_request(WS_PATH, "Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    let mut ws = RawWs { tcp, buf: rest };
    ws.recv_text().await;
    ws.send_text(&format!(
        "40{}",
        json!({ "token": token("10", "1", "ADMIN", 600) })
    ))
    .await;
    assert!(ws.recv_text().await.starts_with("40{"));
    // Ping events, thousands per write, and never a read: each is answered with a pong.
    let mut chunk = Vec::new();
    let mask = [1u8, 2, 3, 4];
    for _ in 0..2000 {
        let payload = br#"42["ping"]"#;
        chunk.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
        chunk.extend_from_slice(&mask);
        chunk.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }
    let mut cut = false;
    for _ in 0..500 {
        match timeout(WAIT, ws.tcp.write_all(&chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                cut = true;
                break;
            }
            Err(_) => panic!("the gateway stopped reading without cutting the connection"),
        }
    }
    let what = format!("a client with a million unread answers cut (write error seen: {cut})");
    gw.wait_metrics(&what, |m| {
        metric(m, "gateway_slow_consumer_disconnects_total", "") >= 1.0
    })
    .await;
    assert!(gw.log().contains("too many frames queued"));
    assert_eq!(gw.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_session_without_a_socketio_connect_is_closed_after_the_timeout() {
    let gw = Gateway::start(&[("GATEWAY_CONNECT_TIMEOUT", "300ms")]);
    let auth = json!({ "token": token("10", "1", "ADMIN", 600) });
    let (mut connected, _) = RawWs::connect(&gw, auth).await;
    assert_eq!(event_of(&connected.recv_text().await).0, "authenticated");
    let mut silent = RawWs::open(&gw).await;
    assert!(silent.recv_text().await.starts_with("0{"));
    let opened = std::time::Instant::now();
    assert_eq!(silent.until_closed().await, Some(1008));
    assert!(
        opened.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gateway_client_protocol_errors_total",
            "reason=\"connect_timeout\""
        ),
        1.0,
        "{m}"
    );
    // The connected session is not affected.
    let (s, _) = gw.publish(&batch_created(1, &["institution:1"], 1)).await;
    assert_eq!(s, 200);
    assert_eq!(event_of(&connected.recv_text().await).0, "batch_update");
}

#[tokio::test]
async fn deflate_is_negotiated_and_one_broadcast_serves_both_kinds_of_socket() {
    let gw = Gateway::start(&[]);
    // Offers the gateway declines: a smaller server window, an unknown parameter.
    for offer in [
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; hello=1\r\n",
        "",
    ] {
        let (_, head) = RawWs::open_with(&gw, offer).await;
        assert!(
            !head.contains("Sec-WebSocket-Extensions"),
            "{offer}: {head}"
        );
    }
    // Two header lines: the declined offer is skipped, the next accepted.
    let (_, head) = RawWs::open_with(
        &gw,
        &format!(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n{OFFER}"
        ),
    )
    .await;
    assert!(head.contains(ACCEPTED), "{head}");

    let auth = json!({ "token": token("10", "1", "ADMIN", 600) });
    let mut zipped = RawWs::connect_deflate(&gw, auth.clone()).await;
    let mut plain = RawWs::connect(&gw, auth).await.0;
    for ws in [&mut zipped, &mut plain] {
        assert_eq!(event_of(&ws.recv_text().await).0, "authenticated");
        // Small packets go plain even where compression was agreed.
        ws.send_text("2").await;
        let pong = ws.recv().await.unwrap();
        assert_eq!((pong.text(), pong.rsv1), ("3", false));
    }
    // One event, one broadcast: compressed to one socket, plain to the other, the same text.
    let (s, _) = gw.publish(&batch_created(1, &["institution:1"], 7)).await;
    assert_eq!(s, 200);
    let (a, b) = (zipped.recv().await.unwrap(), plain.recv().await.unwrap());
    assert!(a.text().len() >= 256, "above the threshold: {}", a.text());
    assert!(a.rsv1 && !b.rsv1, "RSV1 on the compressed socket only");
    assert_eq!(a.text(), b.text());
    assert_eq!(event_of(a.text()).1["payload"]["batchId"], 7);
    assert!(
        a.wire_len < b.wire_len * 3 / 4,
        "compressed {} bytes, plain {}",
        a.wire_len,
        b.wire_len
    );
    // A compressed request of the client is read and answered.
    let join = deflate(&mut compressor(), br#"427["join",{"room":"batch:9"}]"#);
    zipped.send_frame(0xc1, &join, true).await;
    let ack = zipped.recv_text().await;
    assert!(ack.starts_with("437[{"), "{ack}");
    assert!(ack.contains("\"ok\":true"), "{ack}");

    // With compression off, an offer is not taken up.
    let off = Gateway::start(&[("GATEWAY_WS_COMPRESSION", "false")]);
    let (_, head) = RawWs::open_with(&off, OFFER).await;
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
}

#[tokio::test]
async fn deflate_bombs_and_corrupt_streams_close_only_their_socket() {
    let gw = Gateway::start(&[("GATEWAY_MAX_CLIENT_PACKET_BYTES", "16384")]);
    let auth = json!({ "token": token("10", "1", "ADMIN", 600) });
    let mut bystander = RawWs::connect_deflate(&gw, auth.clone()).await;
    assert_eq!(event_of(&bystander.recv_text().await).0, "authenticated");

    // A bomb: 16 MiB of one letter in one small frame.
    let mut bomb = RawWs::connect_deflate(&gw, auth.clone()).await;
    let huge = format!("42[\"ping\",\"{}\"]", "a".repeat(16 << 20));
    let z = deflate(&mut compressor(), huge.as_bytes());
    assert!(z.len() < 16384, "the bomb fits in one frame: {}", z.len());
    bomb.send_frame(0xc1, &z, true).await;
    assert_eq!(bomb.until_closed().await, Some(1009));

    // Fragments that are each small, compressed and inflated, but add up past the cap.
    let mut fragmented = RawWs::connect_deflate(&gw, auth.clone()).await;
    let mut c = compressor();
    fragmented
        .send_frame(0x41, &deflate_part(&mut c, b"42[\"ping\",\""), true)
        .await;
    let mut closed_at = None;
    for i in 0..8 {
        let piece: Vec<u8> = (0..4096).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect();
        let frame = deflate_part(&mut c, &piece);
        // The connection may already be closed: writes after that can fail.
        let mut out = vec![0x00u8, 0x80 | 126];
        out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&frame);
        if fragmented.tcp.write_all(&out).await.is_err() {
            closed_at = Some(i);
            break;
        }
    }
    assert_eq!(
        fragmented.until_closed().await,
        Some(1009),
        "closed at {closed_at:?}"
    );

    // Not a DEFLATE stream at all (block type 3 does not exist).
    let mut corrupt = RawWs::connect_deflate(&gw, auth.clone()).await;
    corrupt.send_frame(0xc1, &[0xff, 0xff, 0xff], true).await;
    assert_eq!(corrupt.until_closed().await, Some(1007));

    // RSV1 from a session that did not negotiate the extension.
    let mut undeclared = RawWs::connect(&gw, auth.clone()).await.0;
    undeclared
        .send_frame(0xc1, &deflate(&mut compressor(), b"2"), true)
        .await;
    assert_eq!(undeclared.until_closed().await, Some(1002));

    let m = gw.metrics().await;
    for (reason, n) in [
        ("message_too_big", 2.0),
        ("invalid_deflate_data", 1.0),
        ("reserved_bits", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                "gateway_client_protocol_errors_total",
                &format!("reason=\"{reason}\"")
            ),
            n,
            "{reason}\n{m}"
        );
    }
    // The process and the well-behaved socket carry on.
    assert_eq!(gw.get("/healthz").await.0, 200);
    let (s, _) = gw.publish(&batch_created(1, &["institution:1"], 8)).await;
    assert_eq!(s, 200);
    let f = bystander.recv().await.unwrap();
    assert!(f.rsv1);
    assert_eq!(event_of(f.text()).1["payload"]["batchId"], 8);
}
