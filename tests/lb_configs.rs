//! The load-balancer configurations in `deploy/`: nginx and HAProxy accept them as rendered,
//! and through each of them, in front of two gateways, health checks, a WebSocket client,
//! Engine.IO long-polling (which needs session affinity), the upgrade from polling to
//! WebSocket and the publish API all work.
//!
//! The gateways run on the embedded bus, so each one only delivers what was published to
//! itself, and only knows the Engine.IO sessions it created: a polling request routed to the
//! other gateway answers 400 "Session ID unknown".

mod common;
use common::lb;

use std::net::SocketAddr;
use std::time::Duration;

use common::client::Client;
use common::{batch_created, token, Gateway, KEY, WAIT};
use futures_util::{SinkExt, StreamExt};
use lb::{Haproxy, Nginx};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Engine.IO ping interval + ping timeout of a default gateway: the longest a healthy
/// connection is quiet.
const HEARTBEAT: Duration = Duration::from_secs(25 + 20);

/// Three addresses nothing needs to listen on (`nginx -t` and `haproxy -c` only parse them).
fn three_gateways() -> Vec<SocketAddr> {
    ["127.0.0.1:38001", "127.0.0.1:38002", "127.0.0.1:38003"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

/// The value of `directive`'s first argument on every line where it starts, as a duration
/// (`75s`, `2m`, `1h`, `500ms`, or bare seconds).
fn durations(config: &str, directive: &str) -> Vec<Duration> {
    config
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(directive))
        .filter(|rest| rest.starts_with(' '))
        .map(|rest| {
            let v = rest.trim().trim_end_matches(';');
            let digits = v.bytes().take_while(u8::is_ascii_digit).count();
            let n: u64 = v[..digits]
                .parse()
                .unwrap_or_else(|_| panic!("{directive} {v}"));
            match &v[digits..] {
                "ms" => Duration::from_millis(n),
                "" | "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                unit => panic!("{directive}: unknown unit {unit:?}"),
            }
        })
        .collect()
}

#[test]
fn nginx_accepts_its_config_for_three_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let gateways = three_gateways();
    let conf = lb::render_nginx("127.0.0.1:38000".parse().unwrap(), &gateways, dir.path());
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(!text.contains("{{"), "unrendered placeholder:\n{text}");
    for g in &gateways {
        let line = format!("server {g} {};", lb::NGINX_SERVER_PARAMS);
        assert_eq!(text.matches(&line).count(), 1, "{line} missing:\n{text}");
    }
    assert!(text.contains("listen 127.0.0.1:38000;"), "{text}");
    assert!(text.contains(&format!("pid {}/nginx.pid;", dir.path().display())));
    let out = lb::check_nginx(&conf, dir.path());
    assert!(out.contains("test is successful"), "{out}");
}

#[test]
fn haproxy_accepts_its_config_for_three_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let gateways = three_gateways();
    let cfg = lb::render_haproxy("127.0.0.1:38000".parse().unwrap(), &gateways, dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains("{{"), "unrendered placeholder:\n{text}");
    for (i, g) in gateways.iter().enumerate() {
        let line = format!("server gw{n} {g} check cookie gw{n}", n = i + 1);
        assert_eq!(text.matches(&line).count(), 1, "{line} missing:\n{text}");
    }
    assert!(text.contains("bind 127.0.0.1:38000"), "{text}");
    let out = lb::check_haproxy(&cfg);
    assert!(out.contains("Configuration file is valid"), "{out}");
}

/// The `{ ... }` block opened by `opening` (which ends with `{`), braces balanced.
fn block<'a>(config: &'a str, opening: &str) -> &'a str {
    let start = config
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening:?}"));
    let mut depth = 0;
    for (i, c) in config[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return &config[start..start + i + 1],
            '}' => depth -= 1,
            _ => {}
        }
    }
    panic!("{opening:?} is not closed")
}

/// Idle timeouts on the Socket.IO paths must outlast a healthy connection's quiet time.
#[test]
fn timeouts_outlast_the_engine_io_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:38000".parse().unwrap();
    let nginx =
        std::fs::read_to_string(lb::render_nginx(any, &three_gateways(), dir.path())).unwrap();
    // Set explicitly in the Socket.IO location, not left to nginx's 60 s default.
    let socket_io = block(&nginx, "location /socket.io/ {");
    for d in ["proxy_read_timeout", "proxy_send_timeout"] {
        let v = durations(socket_io, d);
        assert_eq!(v.len(), 1, "{d} in the Socket.IO location: {v:?}");
        assert!(v[0] > HEARTBEAT, "nginx {d} {:?} <= {HEARTBEAT:?}", v[0]);
    }
    assert!(socket_io.contains("proxy_buffering off;"));

    let haproxy =
        std::fs::read_to_string(lb::render_haproxy(any, &three_gateways(), dir.path())).unwrap();
    for d in ["timeout tunnel", "timeout client", "timeout server"] {
        let v = durations(&haproxy, d);
        assert_eq!(v.len(), 1, "haproxy {d}: {v:?}");
        assert!(v[0] > HEARTBEAT, "haproxy {d} {:?} <= {HEARTBEAT:?}", v[0]);
    }
}

/// Engine.IO packets of a polling response (v4: separated by 0x1e).
fn packets(body: &str) -> Vec<String> {
    body.split('\u{1e}')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// A raw Engine.IO long-polling session through a balancer.
struct Polling {
    http: reqwest::Client,
    base: String,
    sid: String,
    /// `SERVERID=gwN` when the balancer set a cookie (carried on every request).
    cookie: Option<String>,
    /// Polls answered so far (all 200, or the test failed).
    polls: usize,
    /// Every packet received so far.
    seen: Vec<String>,
}

impl Polling {
    fn url(&self) -> String {
        format!(
            "{}/socket.io/?EIO=4&transport=polling&sid={}",
            self.base, self.sid
        )
    }

    /// Handshake: `GET /socket.io/?EIO=4&transport=polling` answers `0{"sid":...}`.
    async fn open(base: &str) -> Polling {
        let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
        let resp = http
            .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .expect("handshake request");
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("SERVERID="))
            .map(|v| v.split(';').next().unwrap().to_string());
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "handshake: {body}");
        let open: Value = serde_json::from_str(
            body.strip_prefix('0')
                .unwrap_or_else(|| panic!("not an open packet: {body:?}")),
        )
        .unwrap_or_else(|e| panic!("open packet {body:?}: {e}"));
        let sid = open["sid"].as_str().expect("sid").to_string();
        assert!(!sid.is_empty(), "{open}");
        assert_eq!(open["pingInterval"], 25000, "{open}");
        assert_eq!(open["pingTimeout"], 20000, "{open}");
        Polling {
            http,
            base: base.to_string(),
            sid,
            cookie,
            polls: 0,
            seen: Vec::new(),
        }
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        }
    }

    /// POSTs Engine.IO packets; the gateway must answer 200 `ok`.
    async fn send(&self, packet: &str) {
        let req = self
            .http
            .post(self.url())
            .header("content-type", "text/plain;charset=UTF-8")
            .body(packet.to_string());
        let resp = self.with_cookie(req).send().await.expect("polling POST");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!((status, body.as_str()), (200, "ok"), "POST {packet}");
    }

    /// One GET poll; it must answer 200. Returns its packets.
    async fn poll(&mut self) -> Vec<String> {
        let req = self.http.get(self.url());
        let resp = self.with_cookie(req).send().await.expect("polling GET");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status, 200,
            "poll #{} of sid {} answered {status} {body:?}: routed to another gateway?",
            self.polls, self.sid
        );
        self.polls += 1;
        let got = packets(&body);
        self.seen.extend(got.iter().cloned());
        got
    }

    /// Polls until a packet matching every one of `wanted` arrived (each matched by the
    /// first packet with that prefix); returns them in `wanted` order.
    async fn poll_for(&mut self, wanted: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        while found.iter().any(Option::is_none) {
            assert!(
                Instant::now() < deadline,
                "no {wanted:?} within {WAIT:?}; got {:?}",
                self.seen
            );
            for p in self.poll().await {
                if p == "2" {
                    self.send("3").await;
                }
                for (slot, prefix) in found.iter_mut().zip(wanted) {
                    if slot.is_none() && p.starts_with(prefix) {
                        *slot = Some(p.clone());
                        break;
                    }
                }
            }
        }
        found.into_iter().map(Option::unwrap).collect()
    }
}

/// The first argument of an event (`42["name",arg]`) or ack (`43N[arg]`) packet.
fn arg(packet: &str, kind: &str) -> Value {
    let body = packet.strip_prefix(kind).expect("packet kind");
    let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{packet}: {e}"));
    let arr = v.as_array().expect("array");
    match kind {
        "42" => arr.get(1).cloned().unwrap_or(Value::Null),
        _ => arr.first().cloned().unwrap_or(Value::Null),
    }
}

/// A polling client through `base`: connects to the namespace with a token, gets
/// `authenticated`, does ping round trips, joins `batch:7`, gets an event published through
/// the balancer (with the session's cookie, if any), all over several polls of one sid.
async fn polling_through(base: &str) -> Polling {
    let mut p = Polling::open(base).await;
    p.send(&format!(
        "40{}",
        json!({ "token": token("10", "1", "ADMIN", 3600) })
    ))
    .await;
    let got = p.poll_for(&["40", "42[\"authenticated\""]).await;
    let connect: Value = serde_json::from_str(&got[0][2..]).expect("connect packet");
    assert!(
        connect["sid"].as_str().is_some_and(|s| !s.is_empty()),
        "{got:?}"
    );
    let me = arg(&got[1], "42");
    assert_eq!(me["userId"], "10", "{me}");
    assert_eq!(me["institutionId"], "1", "{me}");
    assert_eq!(me["role"], "ADMIN", "{me}");

    for id in 1..=3 {
        p.send(&format!("42{id}[\"ping\"]")).await;
        let got = p.poll_for(&[&format!("43{id}["), "42[\"pong\""]).await;
        let pong = arg(&got[1], "42");
        assert!(pong["timestamp"].as_u64().is_some(), "{got:?}");
    }

    p.send(r#"4210["join",{"room":"batch:7"}]"#).await;
    let ack = arg(&p.poll_for(&["4310["]).await[0], "43");
    assert_eq!(
        (&ack["ok"], &ack["room"]),
        (&json!(true), &json!("batch:7")),
        "{ack}"
    );

    // Published through the balancer: the embedded bus only delivers it if the publish
    // reaches the gateway holding this session.
    let req = p
        .http
        .post(format!("{base}/v1/publish"))
        .bearer_auth(KEY)
        .json(&batch_created(1, &["batch:7"], 7));
    let resp = p.with_cookie(req).send().await.expect("publish");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "publish through the balancer: {body}");
    let event = arg(&p.poll_for(&["42[\"batch_update\""]).await[0], "42");
    assert_eq!(
        (
            &event["room"],
            &event["offset"],
            &event["payload"]["batchId"]
        ),
        (&json!("batch:7"), &json!(1), &json!(7)),
        "{event}"
    );
    assert!(p.polls >= 6, "only {} polls", p.polls);
    p
}

/// Upgrades the polling session to WebSocket through the balancer (same sid, same cookie:
/// it must reach the same gateway), then does a ping round trip over it.
async fn upgrade_through(p: &Polling) {
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket&sid={}",
        p.base.replacen("http://", "ws://", 1),
        p.sid
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(c) = &p.cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade timed out")
        .unwrap_or_else(|e| panic!("upgrade of sid {} refused: {e}", p.sid));
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text("4220[\"ping\"]")).await.unwrap();
    let (mut ack, mut pong) = (false, false);
    while !(ack && pong) {
        let t = next_text(&mut ws).await;
        ack |= t.starts_with("4320[");
        pong |= t.starts_with("42[\"pong\"");
    }
    let _ = ws.close(None).await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame other than a noop (`6`, what the server sends to end old polls).
async fn next_text(ws: &mut Ws) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("no websocket frame within the deadline")
            .expect("websocket closed")
            .expect("websocket error");
        match msg {
            Message::Text(t) if t.as_str() == "6" => {}
            Message::Text(t) => return t.to_string(),
            _ => {}
        }
    }
}

/// `GET path` through the balancer: status and body.
async fn get(base: &str, path: &str) -> (u16, String) {
    let resp = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// A WebSocket Socket.IO client through the balancer gets `authenticated` and an ack.
async fn websocket_through(base: &str) {
    let mut c = Client::connect(
        base,
        Some(json!({ "token": token("10", "1", "ADMIN", 3600) })),
    )
    .await
    .expect("websocket connect through the balancer");
    assert!(!c.sid.is_empty());
    let me = c
        .wait_for("authenticated", WAIT)
        .await
        .expect("authenticated through the balancer");
    assert_eq!(
        (&me["userId"], &me["role"]),
        (&json!("10"), &json!("ADMIN")),
        "{me}"
    );
    let ack = c.request("ping", &json!({}), WAIT).await.expect("ping ack");
    assert!(ack.is_object(), "{ack}");
    c.close().await;
}

/// The gateway's answer to a poll of a session it does not have.
fn assert_unknown_sid(status: u16, body: &str) {
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Session ID unknown"), "{body}");
}

/// `upstream=` of every access-log line whose request contains `needle`.
fn upstreams_of(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("upstream="))
                .unwrap_or_else(|| panic!("no upstream= in {l}"))
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn socket_io_through_nginx() {
    let gws = [Gateway::start(&[]), Gateway::start(&[])];
    let nginx = Nginx::start(&[gws[0].public, gws[1].public]);
    let base = nginx.url();

    let (status, body) = get(&base, "/healthz").await;
    assert_eq!(status, 200, "{body}\n{}", nginx.log());
    assert!(body.contains("\"ok\""), "{body}");

    websocket_through(&base).await;

    let p = polling_through(&base).await;
    upgrade_through(&p).await;

    // Every request of the session went to one gateway (the hash of 127.0.0.1), and so did
    // the publish; the other gateway does not know the session.
    let log = nginx.access_log();
    let used = upstreams_of(&log, &format!("sid={}", p.sid));
    assert!(used.len() > p.polls, "{used:?}\n{log}");
    assert!(used.iter().all(|u| *u == used[0]), "{used:?}\n{log}");
    assert_eq!(upstreams_of(&log, "POST /v1/publish"), [used[0].clone()]);
    let owner = gws
        .iter()
        .position(|g| g.public.to_string() == used[0])
        .unwrap_or_else(|| panic!("{} is not a gateway", used[0]));
    let other = &gws[1 - owner];
    let (status, body) = other
        .get(&format!(
            "/socket.io/?EIO=4&transport=polling&sid={}",
            p.sid
        ))
        .await;
    assert_unknown_sid(status, &body);
}

#[tokio::test]
async fn socket_io_through_haproxy() {
    let gws = [Gateway::start(&[]), Gateway::start(&[])];
    let haproxy = Haproxy::start(&[gws[0].public, gws[1].public]);
    let base = haproxy.url();

    let (status, body) = get(&base, "/healthz").await;
    assert_eq!(status, 200, "{body}\n{}", haproxy.log());
    assert!(body.contains("\"ok\""), "{body}");

    // Without a cookie HAProxy balances (leastconn; with no connections open that is round
    // robin): fresh handshakes land on both gateways, and each gets the cookie of the
    // gateway that served it.
    let mut cookies = Vec::new();
    for _ in 0..6 {
        let p = Polling::open(&base).await;
        cookies.push(
            p.cookie
                .clone()
                .expect("HAProxy sets SERVERID on the handshake"),
        );
    }
    for c in ["SERVERID=gw1", "SERVERID=gw2"] {
        assert!(cookies.iter().any(|x| x == c), "{cookies:?}");
    }

    websocket_through(&base).await;

    // With the cookie, every request of the session reaches the gateway that created it.
    let p = polling_through(&base).await;
    let cookie = p.cookie.clone().unwrap();

    // The same sid with the other gateway's cookie reaches the other gateway, which does not
    // know it: the cookie, not luck, is what routes the session.
    let wrong = if cookie == "SERVERID=gw1" {
        "SERVERID=gw2"
    } else {
        "SERVERID=gw1"
    };
    let resp = p
        .http
        .get(p.url())
        .header("cookie", wrong)
        .send()
        .await
        .expect("poll with the wrong cookie");
    let status = resp.status().as_u16();
    assert_unknown_sid(status, &resp.text().await.unwrap_or_default());

    upgrade_through(&p).await;
}
