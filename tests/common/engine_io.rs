//! A hand-driven Engine.IO v4 client for the conformance tests (`tests/engine_io.rs`): HTTP
//! long-polling sessions and WebSockets (direct, or the upgrade of a polling session), and the
//! packets and error answers they carry. Nothing hides the wire: every request and frame is
//! the test's own.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{batch_created, token, Gateway, QUIET, WAIT};

/// The Engine.IO endpoint, protocol 4.
pub const EIO: &str = "/socket.io/?EIO=4";
/// Separates the packets of one polling payload.
pub const SEP: char = '\u{1e}';
/// Longest a poll may stay open in these tests (the default ping interval answers it at the
/// latest), so a request never hangs the test.
pub const POLL_DEADLINE: Duration = Duration::from_secs(40);
/// Most noop answers a test polling through a pending upgrade accepts before its event: a
/// server that answers every poll with a noop at once would spin the client instead of
/// delivering.
pub const MAX_NOOPS: usize = 100;

// ---------------------------------------------------------------------------------------------
// Packets

/// The packets of a polling payload.
pub fn packets(body: &str) -> Vec<String> {
    if body.is_empty() {
        return Vec::new();
    }
    body.split(SEP).map(String::from).collect()
}

/// The event name and first argument of a Socket.IO event packet (`42[...]`, optionally with
/// an ack id), or `None` for any other packet.
pub fn event_of(packet: &str) -> Option<(String, Value)> {
    let rest = packet.strip_prefix("42")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let v: Value = serde_json::from_str(rest).ok()?;
    Some((v[0].as_str()?.to_string(), v[1].clone()))
}

/// The id and first argument of a Socket.IO ack packet (`43<id>[...]`).
pub fn ack_of(packet: &str) -> Option<(u64, Value)> {
    let rest = packet.strip_prefix("43")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, args) = rest.split_at(digits);
    let args: Value = serde_json::from_str(args).ok()?;
    Some((id.parse().ok()?, args[0].clone()))
}

/// The `offset` of a delivered `batch_update` envelope, or `None` for any other packet.
pub fn batch_offset(packet: &str) -> Option<u64> {
    match event_of(packet)? {
        (name, env) if name == "batch_update" => env["offset"].as_u64(),
        _ => None,
    }
}

/// Asserts an HTTP answer is the Engine.IO error `{ code, message }` with status 400, as the
/// Node engine.io server writes it (the code is a number).
#[track_caller]
pub fn assert_eio_error(answer: &(u16, String), code: u64, message: &str, what: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 400, "{what}: status (body {body:?})");
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("{what}: an Engine.IO error JSON body, got {body:?}"));
    assert_eq!(
        v,
        json!({ "code": code, "message": message }),
        "{what}: Engine.IO error body"
    );
}

// ---------------------------------------------------------------------------------------------
// A polling session driven by hand

/// An Engine.IO session id used against one gateway over HTTP long-polling.
#[derive(Clone)]
pub struct Polling {
    http: reqwest::Client,
    /// The polling URL with the session id.
    url: String,
    /// The Engine.IO session id.
    pub sid: String,
}

/// Sends a request; its status and body.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req
        .timeout(POLL_DEADLINE)
        .send()
        .await
        .expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

impl Polling {
    /// Opens a session with the polling handshake; returns it and the open packet's JSON.
    pub async fn open(gw: &Gateway) -> (Polling, Value) {
        let http = reqwest::Client::new();
        let (status, body) = send(http.get(format!("{}{EIO}&transport=polling", gw.url()))).await;
        assert_eq!(status, 200, "polling handshake: {body}");
        let open: Value = body
            .strip_prefix('0')
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_else(|| panic!("an open packet `0{{...}}`, got {body:?}"));
        let sid = open["sid"].as_str().expect("sid in the open packet");
        (Polling::at(gw, sid, http), open)
    }

    /// The session `sid` as addressed to `gw` (which may not know it).
    pub fn at(gw: &Gateway, sid: &str, http: reqwest::Client) -> Polling {
        Polling {
            url: format!("{}{EIO}&transport=polling&sid={sid}", gw.url()),
            sid: sid.to_string(),
            http,
        }
    }

    /// One poll: status and body.
    pub async fn get(&self) -> (u16, String) {
        send(self.http.get(&self.url)).await
    }

    /// Sends `body` (packets joined by the separator) as the stock client does.
    pub async fn post(&self, body: &str) -> (u16, String) {
        send(
            self.http
                .post(&self.url)
                .header("content-type", "text/plain;charset=UTF-8")
                .body(body.to_string()),
        )
        .await
    }

    /// A post that must be accepted.
    pub async fn post_ok(&self, body: &str) {
        let answer = self.post(body).await;
        assert_eq!(answer, (200, "ok".to_string()), "POST {body:?}");
    }

    /// One poll that must succeed; its packets.
    pub async fn poll(&self) -> Vec<String> {
        let (status, body) = self.get().await;
        assert_eq!(status, 200, "poll of {}: {body:?}", self.sid);
        packets(&body)
    }

    /// Polls (answering pings, skipping noops) until a packet for which `done` holds arrives,
    /// within `deadline`; returns every packet received up to it, pings and noops left out.
    /// Panics with
    /// what came if it never does, or if the server answers more than [`MAX_NOOPS`] polls with
    /// nothing but a noop.
    pub async fn poll_until(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let end = Instant::now() + deadline;
        let mut got = Vec::new();
        let mut noops = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(answer) = timeout(left, self.poll()).await else {
                panic!("{what}: not within {deadline:?}; received {got:?}");
            };
            if answer == ["6"] {
                noops += 1;
                assert!(
                    noops <= MAX_NOOPS,
                    "{what}: {noops} polls answered with a noop alone; received {got:?}"
                );
            }
            for p in answer {
                match p.as_str() {
                    "6" => continue,
                    "2" => {
                        self.post_ok("3").await;
                        continue;
                    }
                    _ => {}
                }
                let hit = done(&p);
                got.push(p);
                if hit {
                    return got;
                }
            }
        }
    }

    /// Connects to the namespace `/` with a token for `sub` of tenant 1 and polls until
    /// `authenticated`; returns every packet received until then.
    pub async fn connect(&self, sub: &str) -> Vec<String> {
        let auth = json!({ "token": token(sub, "1", "ADMIN", 3600) });
        self.post_ok(&format!("40{auth}")).await;
        self.poll_until("authenticated", WAIT, |p| {
            event_of(p).is_some_and(|(name, _)| name == "authenticated")
        })
        .await
    }

    /// A poll started now in its own task; a poll answered with a ping alone is answered with
    /// a pong and made again (the server may ping at any time), so the task's answer is the
    /// first other one.
    pub fn pending_get(&self) -> tokio::task::JoinHandle<(u16, String)> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let answer = this.get().await;
                if answer != (200, "2".to_string()) {
                    return answer;
                }
                this.post_ok("3").await;
            }
        })
    }
}

/// Asserts that a poll stays open while the server has nothing to send (for [`QUIET`]); from
/// then on the test knows the server holds it.
pub async fn assert_pending(poll: &mut tokio::task::JoinHandle<(u16, String)>, what: &str) {
    if let Ok(answer) = timeout(QUIET, &mut *poll).await {
        panic!("{what}: the poll should wait for data, it was answered {answer:?}");
    }
}

/// Awaits a pending poll's answer within `deadline`.
pub async fn answer_of(
    poll: tokio::task::JoinHandle<(u16, String)>,
    deadline: Duration,
    what: &str,
) -> (u16, String) {
    timeout(deadline, poll)
        .await
        .unwrap_or_else(|_| panic!("{what}: the poll was not answered within {deadline:?}"))
        .expect("poll task")
}

// ---------------------------------------------------------------------------------------------
// WebSocket

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket to the gateway: a direct session, or the upgrade of a polling session.
pub struct Ws(Stream);

impl Ws {
    /// Opens `ws://…/socket.io/?EIO=4&transport=websocket`, with `&sid=` when upgrading.
    pub async fn open(gw: &Gateway, sid: Option<&str>) -> Ws {
        let mut url = format!("ws://{}{EIO}&transport=websocket", gw.public);
        if let Some(sid) = sid {
            url.push_str(&format!("&sid={sid}"));
        }
        let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket handshake in time")
            .expect("WebSocket handshake");
        Ws(ws)
    }

    pub async fn send(&mut self, text: &str) {
        self.0.send(Message::text(text)).await.expect("ws send");
    }

    /// The next text message (answering pings on the way), or `None` once the server closed.
    /// Panics after `deadline`.
    pub async fn recv(&mut self, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let next = timeout(left, self.0.next())
                .await
                .unwrap_or_else(|_| panic!("no WebSocket message within {deadline:?}"));
            match next {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => self.send("3").await,
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Whether the server closes the WebSocket within `deadline` (text it sends on the way is
    /// returned in the error).
    pub async fn closed_within(&mut self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match timeout(left, self.0.next()).await {
                Err(_) => return Err(format!("still open after {deadline:?}")),
                Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return Ok(()),
                Ok(Some(Ok(m))) => {
                    if !matches!(&m, Message::Ping(_) | Message::Pong(_)) {
                        return Err(format!("unexpected message before the close: {m:?}"));
                    }
                }
            }
        }
    }

    /// Opens a direct WebSocket session connected to `/` with a token for `sub` of tenant 1;
    /// returns once `authenticated` arrived.
    pub async fn connect(gw: &Gateway, sub: &str) -> Ws {
        let mut ws = Ws::open(gw, None).await;
        let open = ws.recv(WAIT).await.expect("open packet");
        assert!(open.starts_with("0{"), "{open}");
        let auth = json!({ "token": token(sub, "1", "ADMIN", 3600) });
        ws.send(&format!("40{auth}")).await;
        loop {
            let p = ws.recv(WAIT).await.expect("connection open");
            if event_of(&p).is_some_and(|(name, _)| name == "authenticated") {
                return ws;
            }
        }
    }

    /// Receives until a message for which `done` holds; returns it.
    pub async fn recv_until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(p) if done(&p) => return p,
                Some(_) => {}
                None => panic!("{what}: the WebSocket closed first"),
            }
        }
    }
}

/// Publishes one `batch_created` event to `room` of tenant 1; returns its offset there.
pub async fn publish(gw: &Gateway, room: &str, n: i64) -> u64 {
    let (status, body) = gw.publish(&batch_created(1, &[room], n)).await;
    assert_eq!(status, 200, "publish: {body}");
    body["rooms"][0]["offset"].as_u64().expect("offset")
}
