//! Engine.IO v4 as the stock socket.io-client 4.8 relies on it, spoken by hand over raw HTTP
//! long-polling and raw WebSocket against a real gateway process: the polling handshake,
//! payloads of several packets, the Engine.IO error answers, overlapping polls, oversized
//! posts, heartbeats on polling, the upgrade (probe, noop flush, upgrade packet) and its
//! edge cases, and that every answer is the same on polling as on a direct WebSocket session.
//!
//! The stock client with its default options (polling, then upgrade) runs from Node at the end.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::engine_io::{
    ack_of, answer_of, assert_eio_error, assert_pending, batch_offset, event_of, packets, publish,
    Polling, Ws, MAX_NOOPS, SEP,
};
use common::{metric, Gateway, QUIET, WAIT};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

/// How soon the server must answer a poll once it has something to send (an event, the noop
/// of an upgrade): far below the default ping interval (25 s), which would otherwise answer it.
const PROMPT: Duration = Duration::from_secs(2);

/// engine.io's default upgrade timeout is 10 s: a WebSocket that never completes the upgrade
/// must be closed by then; this is that plus a margin.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(20);

/// Probes and completes the upgrade of `polling` on `ws` while `poll` is pending: `2probe`,
/// `3probe`, the pending poll flushed with a noop, `5`.
async fn upgrade(ws: &mut Ws, poll: tokio::task::JoinHandle<(u16, String)>) {
    ws.send("2probe").await;
    assert_eq!(ws.recv(WAIT).await.as_deref(), Some("3probe"));
    let answer = answer_of(poll, PROMPT, "the poll pending during the upgrade").await;
    assert_eq!(
        answer,
        (200, "6".to_string()),
        "the pending poll is flushed with a noop"
    );
    ws.send("5").await;
}

// ---------------------------------------------------------------------------------------------
// 1-2. Handshake and payloads

#[tokio::test]
async fn polling_handshake_announces_the_upgrade_heartbeat_and_max_payload() {
    let gw = Gateway::start(&[
        ("GATEWAY_PING_INTERVAL", "7s"),
        ("GATEWAY_PING_TIMEOUT", "6s"),
        ("GATEWAY_MAX_CLIENT_PACKET_BYTES", "20000"),
    ]);
    let (_, open) = Polling::open(&gw).await;
    let sid = open["sid"].as_str().unwrap();
    assert!(!sid.is_empty(), "{open}");
    assert_eq!(
        open,
        json!({
            "sid": sid,
            "upgrades": ["websocket"],
            "pingInterval": 7000,
            "pingTimeout": 6000,
            "maxPayload": 20000,
        })
    );
    // Each handshake is a session of its own.
    let (other, _) = Polling::open(&gw).await;
    assert_ne!(other.sid, sid);
}

#[tokio::test]
async fn a_post_of_several_packets_is_answered_and_queued_packets_come_in_one_poll() {
    let gw = Gateway::start(&[]);
    let (s, _) = Polling::open(&gw).await;
    // The connect answer, then `authenticated`.
    let got = s.connect("10").await;
    assert_eq!(got.len(), 2, "{got:?}");
    let connected: Value = serde_json::from_str(got[0].strip_prefix("40").expect("40{sid}"))
        .unwrap_or_else(|_| panic!("{got:?}"));
    assert!(connected["sid"].is_string(), "{got:?}");

    // Two events with acks in one POST: both answered.
    s.post_ok(&format!("421[\"ping\",{{}}]{SEP}422[\"join\",\"batch:7\"]"))
        .await;
    let mut acks = std::collections::BTreeMap::new();
    let mut pong = None;
    let end = Instant::now() + WAIT;
    while acks.len() < 2 || pong.is_none() {
        let left = end.saturating_duration_since(Instant::now());
        let answer = timeout(left, s.poll())
            .await
            .unwrap_or_else(|_| panic!("acks 1 and 2 and the pong; got {acks:?} {pong:?}"));
        for p in answer {
            if let Some((id, body)) = ack_of(&p) {
                assert!(acks.insert(id, body).is_none(), "ack {id} twice");
            } else if let Some((name, body)) = event_of(&p) {
                assert_eq!(name, "pong", "{p}");
                pong = Some(body);
            } else {
                panic!("unexpected packet {p:?}");
            }
        }
    }
    assert!(acks[&1]["timestamp"].is_i64(), "{acks:?}");
    assert_eq!(acks[&2]["ok"], true, "{acks:?}");
    assert_eq!(acks[&2]["room"], "batch:7", "{acks:?}");
    assert!(pong.unwrap()["timestamp"].is_i64());

    // Three events queued while no poll is open go out together, joined, in order.
    for n in 1..=3 {
        assert_eq!(publish(&gw, "batch:7", n).await, n as u64);
    }
    gw.wait_metrics("three events queued for the socket", |m| {
        metric(m, "gateway_events_delivered_total", "") >= 3.0
    })
    .await;
    let got = s.poll().await;
    let offsets: Vec<_> = got.iter().filter_map(|p| batch_offset(p)).collect();
    assert_eq!(offsets, [1, 2, 3], "one poll, three packets: {got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// 3-5. Errors the client gets as Engine.IO errors

#[tokio::test]
async fn an_unknown_sid_or_one_of_another_gateway_is_session_id_unknown() {
    let a = Gateway::start(&[]);
    let b = Gateway::start(&[]);
    let http = reqwest::Client::new();
    let (on_a, _) = Polling::open(&a).await;
    // A sid of the right shape that no gateway gave, and the sid of gateway a sent to b.
    let cases = [
        (
            Polling::at(&a, "AAAAAAAAAAAAAAAA", http.clone()),
            "unknown sid",
        ),
        (
            Polling::at(&b, &on_a.sid, http.clone()),
            "sid of another gateway",
        ),
    ];
    for (s, what) in &cases {
        let get = s.get().await;
        assert_eio_error(&get, 1, "Session ID unknown", &format!("GET, {what}"));
        let post = s.post("40").await;
        assert_eio_error(&post, 1, "Session ID unknown", &format!("POST, {what}"));
    }
    // The session on a is untouched by b's refusals.
    let mut poll = on_a.pending_get();
    assert_pending(&mut poll, "the session on its own gateway").await;
    poll.abort();
}

#[tokio::test]
async fn a_second_concurrent_poll_is_refused_and_ends_the_session() {
    let gw = Gateway::start(&[]);
    let (s, _) = Polling::open(&gw).await;
    let mut first = s.pending_get();
    assert_pending(&mut first, "the first poll").await;
    let second = s.get().await;
    // The pending poll is closed with the close packet.
    let first = answer_of(first, PROMPT, "the first poll after the overlap").await;
    assert_eio_error(&second, 3, "Bad request", "the overlapping poll");
    assert_eq!(
        first,
        (200, "1".to_string()),
        "the first poll gets the close packet"
    );
    let later = s.get().await;
    assert_eio_error(&later, 1, "Session ID unknown", "a poll after the overlap");
    let later = s.post("3").await;
    assert_eio_error(&later, 1, "Session ID unknown", "a post after the overlap");
}

#[tokio::test]
async fn an_oversized_post_is_413_and_ends_the_session() {
    let gw = Gateway::start(&[("GATEWAY_MAX_CLIENT_PACKET_BYTES", "1024")]);
    let (s, open) = Polling::open(&gw).await;
    assert_eq!(open["maxPayload"], 1024);
    s.connect("10").await;
    // Within the limit: accepted.
    let fits = format!("42[\"ping\",\"{}\"]", "x".repeat(900));
    s.post_ok(&fits).await;
    // One byte over, in a single packet; then several packets that together exceed it.
    let over = format!("4{}", "x".repeat(1024));
    assert_eq!(over.len(), 1025);
    let (status, body) = s.post(&over).await;
    assert_eq!(status, 413, "oversized POST: {body:?}");
    let later = s.get().await;
    assert_eio_error(&later, 1, "Session ID unknown", "a poll after the 413");

    let (s, _) = Polling::open(&gw).await;
    let half = format!("4{}", "y".repeat(600));
    let (status, body) = s.post(&format!("{half}{SEP}{half}")).await;
    assert_eq!(
        status, 413,
        "a payload of packets over maxPayload together: {body:?}"
    );
    let later = s.post("3").await;
    assert_eio_error(&later, 1, "Session ID unknown", "a post after the 413");

    // A chunked POST cannot be held to maxPayload before it is read: 411, counted once.
    let (s, _) = Polling::open(&gw).await;
    let before = metric(
        &gw.metrics().await,
        "gateway_client_protocol_errors_total",
        "bad_request",
    );
    let mut tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let request = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: gw\r\n\
         Transfer-Encoding: chunked\r\n\r\n1\r\n3\r\n0\r\n\r\n",
        s.sid
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes())
        .await
        .unwrap();
    let answer = read_until(&mut tcp, b"}}", "a chunked POST").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    let after = metric(
        &gw.metrics().await,
        "gateway_client_protocol_errors_total",
        "bad_request",
    );
    assert_eq!(after - before, 1.0, "one refusal, counted once");
}

#[tokio::test]
async fn a_post_that_expects_100_continue_is_told_to_send_its_body() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(&[]);
    let (s, _) = Polling::open(&gw).await;
    s.connect("10").await;
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: gw\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\n\
         Expect: 100-continue\r\n\r\n",
        s.sid
    );
    // Connects and sends the head; the gateway tells it to go on.
    let continued = || async {
        let mut tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        read_until(&mut tcp, interim, "the interim answer").await;
        tcp
    };
    let mut tcp = continued().await;
    tcp.write_all(b"3").await.unwrap();
    let answer = read_until(&mut tcp, b"ok", "the POST's answer").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");

    // A client gone after the interim answer ends its session as a lost transport, not as an
    // oversized POST.
    let oversized = || async {
        let m = gw.metrics().await;
        metric(
            &m,
            "gateway_client_protocol_errors_total",
            "payload_too_large",
        )
    };
    let before = oversized().await;
    drop(continued().await);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = s.get().await;
        if status == 400 {
            assert_eio_error(
                &(status, body),
                1,
                "Session ID unknown",
                "a poll after the body never came",
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session outlived its lost POST: {status} {body}"
        );
    }
    assert_eq!(
        oversized().await,
        before,
        "not counted as an oversized POST"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Heartbeat on polling

#[tokio::test]
async fn polling_heartbeat_keeps_answering_sessions_and_ends_silent_ones() {
    const INTERVAL: Duration = Duration::from_millis(500);
    const PING_TIMEOUT: Duration = Duration::from_millis(500);
    let gw = Gateway::start(&[
        ("GATEWAY_PING_INTERVAL", "500ms"),
        ("GATEWAY_PING_TIMEOUT", "500ms"),
    ]);
    let (s, _) = Polling::open(&gw).await;
    // Four pings answered: the session outlives interval + timeout several times over.
    for i in 0..4 {
        let started = Instant::now();
        let got = timeout(INTERVAL + PROMPT, s.poll())
            .await
            .unwrap_or_else(|_| panic!("ping {i} within the interval"));
        assert_eq!(got, ["2"], "ping {i} after {:?}", started.elapsed());
        s.post_ok("3").await;
    }
    // Silent from now on: the session ends within interval + timeout (+ margin).
    let silent = Instant::now();
    let deadline = INTERVAL + PING_TIMEOUT + Duration::from_secs(3);
    let mut seen = Vec::new();
    let ended = loop {
        let left = deadline.saturating_sub(silent.elapsed());
        let Ok((status, body)) = timeout(left, s.get()).await else {
            panic!("the silent session still open after {deadline:?}; polls gave {seen:?}");
        };
        if status == 400 {
            break (status, body);
        }
        assert_eq!(status, 200, "{body:?}");
        seen.push(body);
    };
    assert_eio_error(
        &ended,
        1,
        "Session ID unknown",
        "a poll of the silent session",
    );
    // What the polls brought meanwhile: unanswered pings, at most a close packet.
    for body in &seen {
        assert!(
            packets(body).iter().all(|p| p == "2" || p == "1"),
            "{seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7-10. Upgrade

#[tokio::test]
async fn upgrade_probe_noop_flush_then_delivery_over_the_websocket() {
    let gw = Gateway::start(&[]);
    let (s, _) = Polling::open(&gw).await;
    s.connect("10").await;
    let mut poll = s.pending_get();
    assert_pending(&mut poll, "the poll before the upgrade").await;
    let mut ws = Ws::open(&gw, Some(&s.sid)).await;
    upgrade(&mut ws, poll).await;

    // Events now come over the WebSocket.
    let offset = publish(&gw, "user:10", 1).await;
    let p = ws
        .recv_until("the event over the WebSocket", |p| {
            batch_offset(p).is_some()
        })
        .await;
    assert_eq!(batch_offset(&p), Some(offset), "{p}");
    // Requests too: an ack comes back over the WebSocket.
    ws.send("421[\"ping\",{}]").await;
    let p = ws
        .recv_until("the ping ack", |p| p.starts_with("431"))
        .await;
    assert!(ack_of(&p).unwrap().1["timestamp"].is_i64(), "{p}");

    // Polling is over for this session.
    let late = s.get().await;
    assert_eq!(late.0, 400, "a poll after the upgrade: {late:?}");
    let v: Value = serde_json::from_str(&late.1)
        .unwrap_or_else(|_| panic!("Engine.IO error JSON, got {:?}", late.1));
    let code_3 = json!({ "code": 3, "message": "Bad request" });
    let code_1 = json!({ "code": 1, "message": "Session ID unknown" });
    assert!(
        v == code_3 || v == code_1,
        "a poll after the upgrade: {v} is neither {code_3} nor {code_1}"
    );
    // The upgraded session is still alive after the refused poll.
    let offset = publish(&gw, "user:10", 2).await;
    let p = ws
        .recv_until("an event after the refused poll", |p| {
            batch_offset(p).is_some()
        })
        .await;
    assert_eq!(batch_offset(&p), Some(offset), "{p}");
}

/// One session whose upgrade never completes: `probe` says whether the client sends `2probe`
/// (and gets `3probe`) before falling silent on the WebSocket. The polling session keeps
/// delivering, and the WebSocket is closed by the server within the upgrade deadline.
async fn abandoned_upgrade(gw: &Gateway, sub: &str, probe: bool) {
    let what = if probe {
        "probed, never upgraded"
    } else {
        "never probed"
    };
    let room = format!("user:{sub}");
    let (s, _) = Polling::open(gw).await;
    s.connect(sub).await;
    let opened = Instant::now();
    let mut ws = Ws::open(gw, Some(&s.sid)).await;
    if probe {
        ws.send("2probe").await;
        assert_eq!(ws.recv(WAIT).await.as_deref(), Some("3probe"), "{what}");
    }
    let offset = publish(gw, &room, 1).await;
    s.poll_until(&format!("{what}: an event over polling"), WAIT, |p| {
        batch_offset(p) == Some(offset)
    })
    .await;
    let closed = ws.closed_within(UPGRADE_DEADLINE.saturating_sub(opened.elapsed()));
    closed
        .await
        .unwrap_or_else(|e| panic!("{what}: the WebSocket that never upgraded: {e}"));
    // The polling session outlives the abandoned WebSocket.
    let offset = publish(gw, &room, 2).await;
    s.poll_until(
        &format!("{what}: an event over polling after the WebSocket closed"),
        WAIT,
        |p| batch_offset(p) == Some(offset),
    )
    .await;
}

#[tokio::test]
async fn an_upgrade_never_completed_leaves_polling_working_and_the_websocket_closed() {
    let gw = Gateway::start(&[]);
    tokio::join!(
        abandoned_upgrade(&gw, "21", false),
        abandoned_upgrade(&gw, "22", true),
    );
}

#[tokio::test]
async fn an_open_poll_is_answered_as_soon_as_an_event_arrives() {
    let gw = Gateway::start(&[]);
    let (s, _) = Polling::open(&gw).await;
    s.connect("10").await;
    let mut poll = s.pending_get();
    assert_pending(&mut poll, "the poll before the event").await;
    let offset = publish(&gw, "user:10", 1).await;
    let (status, body) = answer_of(poll, PROMPT, "the open poll after a publish").await;
    assert_eq!(status, 200, "{body:?}");
    let got = packets(&body);
    let offsets: Vec<_> = got.iter().filter_map(|p| batch_offset(p)).collect();
    assert_eq!(offsets, [offset], "{got:?}");
}

#[tokio::test]
async fn an_upgrade_racing_a_stream_of_events_loses_and_repeats_none() {
    /// Events the background stream publishes, one request after another from the start.
    const STREAM: u64 = 140;
    /// Events the test itself publishes in each phase of the upgrade (four phases).
    const BURST: u64 = 15;
    const TOTAL: u64 = STREAM + 4 * BURST;
    let gw = Arc::new(Gateway::start(&[]));
    let (s, _) = Polling::open(&gw).await;
    s.connect("10").await;
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let burst = |n: u64| {
        let (gw, published) = (gw.clone(), published.clone());
        async move {
            for _ in 0..n {
                let offset = publish(&gw, "user:10", 0).await;
                published.lock().unwrap().push(offset);
            }
        }
    };
    // The stream runs through the whole upgrade at its own pace; each phase also gets a burst
    // of its own, so every phase carries events whatever the timing.
    let stream = tokio::spawn(burst(STREAM));

    // The poller: polls until told to stop, finishing the poll in flight (as the stock client
    // pauses polling before it sends the upgrade packet).
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut over_polling) = tokio::sync::mpsc::unbounded_channel();
    let poller = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut noops = 0;
            while !stop.load(Ordering::SeqCst) {
                let got = s.poll().await;
                if got == ["6"] {
                    noops += 1;
                    assert!(noops <= MAX_NOOPS, "polls answered with a noop alone");
                }
                for p in got {
                    if p == "2" {
                        s.post_ok("3").await;
                    } else if p != "6" {
                        let _ = tx.send(p);
                    }
                }
            }
        })
    };
    // Polling delivers part of the stream first.
    let mut received = Vec::new();
    while received.len() < 10 {
        let p = timeout(WAIT, over_polling.recv())
            .await
            .expect("events over polling before the upgrade")
            .expect("poller running");
        received.extend(batch_offset(&p));
    }
    // The WebSocket is open, not probed yet.
    let mut ws = Ws::open(&gw, Some(&s.sid)).await;
    burst(BURST).await;
    ws.send("2probe").await;
    assert_eq!(ws.recv(WAIT).await.as_deref(), Some("3probe"));
    // Probed; the poll in flight is still open.
    burst(BURST).await;
    stop.store(true, Ordering::SeqCst);
    timeout(PROMPT, poller)
        .await
        .expect("the poll in flight answered promptly once the probe is done")
        .expect("poller");
    while let Ok(p) = over_polling.try_recv() {
        received.extend(batch_offset(&p));
    }
    let by_polling = received.len();
    // Polling paused, the upgrade packet not sent yet.
    burst(BURST).await;
    ws.send("5").await;
    // Upgraded.
    burst(BURST).await;

    let end = Instant::now() + WAIT;
    while (received.len() as u64) < TOTAL {
        let left = end.saturating_duration_since(Instant::now());
        match ws.recv(left).await {
            Some(p) => received.extend(batch_offset(&p)),
            None => panic!("the WebSocket closed after {} events", received.len()),
        }
    }
    timeout(WAIT, stream)
        .await
        .expect("stream published")
        .expect("stream");
    // Nothing more: no duplicate trailing behind.
    if let Ok(Some(p)) = timeout(QUIET, ws.recv(WAIT)).await {
        panic!("unexpected after the last event: {p}");
    }
    let mut published = published.lock().unwrap().clone();
    published.sort_unstable();
    assert_eq!(published, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(
        received, published,
        "each event once, in offset order ({by_polling} over polling, the rest over the WebSocket)"
    );
    assert!(
        (by_polling as u64) < TOTAL - 2 * BURST,
        "the last bursts came over the WebSocket: {by_polling} over polling"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. The same answers on every transport

#[tokio::test]
async fn an_unknown_event_gets_the_same_answer_on_polling_as_on_websocket() {
    let gw = Gateway::start(&[]);
    let unknown = "421[\"no_such_event\",{}]";

    let mut ws = Ws::connect(&gw, "10").await;
    ws.send(unknown).await;
    let over_ws = ws
        .recv_until("the ack over WebSocket", |p| p.starts_with("431"))
        .await;
    let (_, over_ws) = ack_of(&over_ws).expect("ack");
    assert_eq!(over_ws["ok"], false, "{over_ws}");
    assert_eq!(over_ws["error"]["code"], "unknown_event", "{over_ws}");

    let (s, _) = Polling::open(&gw).await;
    s.connect("11").await;
    s.post_ok(unknown).await;
    let got = s
        .poll_until("the ack over polling", WAIT, |p| p.starts_with("431"))
        .await;
    let (_, over_polling) = ack_of(got.last().unwrap()).expect("ack");
    assert_eq!(over_polling, over_ws);
}

// ---------------------------------------------------------------------------------------------
// The stock client

#[tokio::test]
async fn a_draining_gateway_sends_sessions_it_does_not_hold_to_the_next_one() {
    let gw = Gateway::start(&[("GATEWAY_DRAIN_DELAY", "30s")]);
    gw.wait_readyz(200).await;
    let (own, _) = Polling::open(&gw).await;
    gw.sigterm();
    gw.wait_readyz(503).await;
    // A session of another gateway (the hash still points here): 503 `draining`, which the
    // load balancer retries on the next gateway, for a GET and for a POST.
    let stranger = Polling::at(&gw, "a-session-of-another-gateway", reqwest::Client::new());
    for (what, (status, body)) in [
        ("GET", stranger.get().await),
        ("POST", stranger.post("3").await),
    ] {
        assert_eq!(status, 503, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(v["error"]["code"], "draining", "{what}: {v}");
    }
    // The same for the WebSocket upgrade of a session it does not hold.
    let mut tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let upgrade = "GET /socket.io/?EIO=4&transport=websocket&sid=a-session-of-another-gateway \
         HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut tcp, upgrade.as_bytes())
        .await
        .unwrap();
    let answer = read_until(
        &mut tcp,
        b"draining",
        "an upgrade of another gateway's session",
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Its own sessions go on until the connections are closed.
    own.post_ok("3").await;
}

/// Reads from `tcp` until `want` appears in what was read (with the deadline); returns it all.
async fn read_until(tcp: &mut tokio::net::TcpStream, want: &[u8], what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !got.windows(want.len()).any(|w| w == want) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: no {:?} in {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&got)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "{what}: closed; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A masked client text frame.
fn client_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A WebSocket handshake that arrives on a kept-alive connection after another request (as a
/// proxy reusing its upstream connections sends it) is answered by the HTTP server and then
/// served by the gateway's own transport: a new session, and the upgrade of a polling session.
#[tokio::test]
async fn websocket_handshakes_on_a_kept_alive_connection_are_served() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(&[]);
    gw.wait_readyz(200).await;
    let addr = gw.url().trim_start_matches("http://").to_string();
    let upgrade = |query: &str| {
        format!(
            "GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let kept_alive = || async {
        let mut tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut tcp, b"{\"status\":\"ok\"}", "healthz").await;
        tcp
    };

    // A new WebSocket session: the 101, then the Engine.IO open packet on the same connection.
    let mut tcp = kept_alive().await;
    tcp.write_all(upgrade("").as_bytes()).await.unwrap();
    let got = read_until(&mut tcp, b"\"upgrades\":[]}", "new session").await;
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    tcp.write_all(&client_text(b"40")).await.unwrap();
    read_until(&mut tcp, b"40{\"sid\"", "connect answer").await;

    // The upgrade of a polling session: probe, upgrade, then the session answers over it.
    let (polling, _) = Polling::open(&gw).await;
    let mut tcp = kept_alive().await;
    tcp.write_all(upgrade(&format!("&sid={}", polling.sid)).as_bytes())
        .await
        .unwrap();
    let got = read_until(&mut tcp, b"\r\n\r\n", "upgrade 101").await;
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    tcp.write_all(&client_text(b"2probe")).await.unwrap();
    read_until(&mut tcp, b"3probe", "probe answer").await;
    tcp.write_all(&client_text(b"5")).await.unwrap();
    tcp.write_all(&client_text(b"40")).await.unwrap();
    read_until(
        &mut tcp,
        format!("40{{\"sid\":\"{}\"}}", polling.sid).as_bytes(),
        "connect answer over the upgraded session",
    )
    .await;
    let (status, body) = polling.get().await;
    assert_eq!(status, 400, "a poll after the upgrade: {body}");

    // A WebSocket version the gateway does not speak: 426 naming the one it does, as on a
    // fresh connection (RFC 6455 §4.4).
    let mut tcp = kept_alive().await;
    tcp.write_all(upgrade("").replace("Version: 13", "Version: 8").as_bytes())
        .await
        .unwrap();
    let got = read_until(&mut tcp, b"unsupported_websocket_version", "the 426").await;
    let got = String::from_utf8_lossy(&got).to_lowercase();
    assert!(got.starts_with("http/1.1 426"), "{got}");
    assert!(got.contains("sec-websocket-version: 13\r\n"), "{got}");
}
