//! Three gateways on one Redis behind nginx, clients spread over them (each from its own
//! loopback address, since nginx hashes client addresses), publishers sending steadily:
//! a gateway SIGKILLed, then a rolling restart of all of them. Every client must end with every
//! event of its rooms, once, in order.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::lb::Nginx;
use common::node::Script;
use common::publish::{incident as event, key, publisher};
use common::redis_server::RedisServer;
use common::resilient::Resilient;
use common::{metric, Gateway};
use realtime_gateway::Publisher;

const ROOMS: [&str; 2] = ["exam:1", "institution:1"];
/// The stock client's configurations (see tests/node/lib.mjs): one transport only, and the
/// client's default options (polling, then the upgrade to WebSocket).
const TRANSPORTS: [&str; 3] = ["websocket", "polling", "default"];
const CLIENTS: u8 = 9;

fn env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis.url()),
        ("GATEWAY_HISTORY_MAX_LEN", "10000".into()),
        ("GATEWAY_MAX_REPLAY", "5000".into()),
        ("GATEWAY_SOCKET_BUFFER", "4096".into()),
        ("GATEWAY_DRAIN_DELAY", "300ms".into()),
        ("GATEWAY_DRAIN_PERIOD", "600ms".into()),
    ]
}

fn start(redis: &RedisServer, listen: &str) -> Gateway {
    let env = env(redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start_at(listen, &env)
}

/// The engine transport a session of configuration `transports` runs on once connected.
fn engine_transport(transports: &str) -> &str {
    if transports == "default" {
        "websocket"
    } else {
        transports
    }
}

/// How many events `publish_steadily` has published so far.
type Published = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// Publishes `rate` events per second round-robin over ROOMS until `stop`, counting them in
/// `count`; returns the last offset per room.
fn publish_steadily(
    p: Publisher,
    rate: u64,
    stop: tokio_util::sync::CancellationToken,
    count: Published,
) -> tokio::task::JoinHandle<HashMap<String, u64>> {
    tokio::spawn(async move {
        let mut last = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let per_tick = (rate / 100).max(1);
        let mut n = 0u64;
        while !stop.is_cancelled() {
            tick.tick().await;
            for _ in 0..per_tick {
                let room = ROOMS[(n as usize) % ROOMS.len()];
                let placed = p
                    .publish(&event(n), &[key("1", room)])
                    .await
                    .expect("publish");
                last.insert(room.to_string(), placed[0].0);
                n += 1;
                count.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        }
        last
    })
}

/// Waits (with the deadline) until at least `n` events were published.
async fn published_at_least(count: &Published, n: u64) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while count.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher stalled below {n} events"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` ready gateways on `redis` behind a fresh nginx.
async fn cluster(redis: &RedisServer, n: usize) -> (Vec<Gateway>, Nginx) {
    let gws: Vec<Gateway> = (0..n).map(|_| start(redis, "127.0.0.1:0")).collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }
    let nginx = Nginx::start(&gws.iter().map(|g| g.public).collect::<Vec<_>>());
    (gws, nginx)
}

async fn clients(url: &str) -> Vec<Resilient> {
    let mut out = Vec::new();
    for i in 0..CLIENTS {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i));
        out.push(
            Resilient::connect_from(url, &format!("{}", 100 + i), "1", &["exam:1"], Some(source))
                .await,
        );
    }
    out
}

/// Runs every client concurrently for `period`.
async fn run_all(clients: Vec<Resilient>, period: Duration) -> Vec<Resilient> {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.run_for(period).await;
                c
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

async fn settle_and_check(clients: Vec<Resilient>, last: &HashMap<String, u64>) -> usize {
    let mut reconnects = 0;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let last = last.clone();
            tokio::spawn(async move {
                c.settle(&last).await;
                c
            })
        })
        .collect();
    for t in tasks {
        let c = t.await.unwrap();
        for room in ROOMS {
            c.check(room, last[room]).unwrap();
            let lost = &c.rooms[room].not_recovered;
            assert!(lost.is_empty(), "{room}: recovery refused: {lost:?}");
        }
        reconnects += c.reconnects;
    }
    reconnects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_nothing() {
    let redis = RedisServer::start();
    let (mut gws, nginx) = cluster(&redis, 3).await;
    let clients = clients(&nginx.url()).await;
    let mut per_gateway = Vec::new();
    for gw in &gws {
        per_gateway.push(metric(&gw.metrics().await, "gateway_connections", ""));
    }
    let victim = (0..3)
        .max_by(|a, b| per_gateway[*a].total_cmp(&per_gateway[*b]))
        .unwrap();
    assert!(
        per_gateway[victim] >= 1.0,
        "no client on any gateway? {per_gateway:?}"
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let count = Published::default();
    let publishing = publish_steadily(publisher(&redis), 300, stop.clone(), count.clone());
    let running = tokio::spawn(run_all(clients, Duration::from_secs(3)));
    // Kill under load: after 300 events, and keep publishing for 300 more.
    published_at_least(&count, 300).await;
    gws[victim].kill();
    published_at_least(&count, 600).await;
    stop.cancel();
    let last = publishing.await.unwrap();
    let clients = running.await.unwrap();
    let reconnects = settle_and_check(clients, &last).await;
    assert!(
        reconnects as f64 >= per_gateway[victim],
        "the victim's clients did not reconnect ({reconnects})"
    );
    assert!(
        last["exam:1"] > 200,
        "too little traffic to prove anything: {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_nothing() {
    let redis = RedisServer::start();
    let (mut gws, nginx) = cluster(&redis, 3).await;
    let addrs: Vec<_> = gws.iter().map(|g| g.public).collect();
    let clients = clients(&nginx.url()).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = publish_steadily(publisher(&redis), 300, stop.clone(), Published::default());
    let running = tokio::spawn(run_all(clients, Duration::from_secs(8)));
    for (i, addr) in addrs.iter().enumerate() {
        let status = gws[i].terminate();
        assert!(
            status.success(),
            "gateway {i} exit status {status:?}\n{}",
            gws[i].log()
        );
        assert!(gws[i].log().contains("drain done"), "{}", gws[i].log());
        gws[i] = start(&redis, &addr.to_string());
        gws[i].wait_readyz(200).await;
    }
    stop.cancel();
    let last = publishing.await.unwrap();
    let clients = running.await.unwrap();
    let reconnects = settle_and_check(clients, &last).await;
    assert!(
        reconnects >= CLIENTS as usize,
        "every client lives through at least one restart ({reconnects})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_client_reconnects_by_itself_after_a_drain() {
    let redis = RedisServer::start();
    let mut not_closed = Vec::new();
    for transports in TRANSPORTS {
        let (mut gws, nginx) = cluster(&redis, 2).await;
        let script = Script::start(
            "drain-client.mjs",
            &[
                ("GATEWAY_URL", nginx.url()),
                ("TOKEN", common::token("10", "1", "ADMIN", 3600)),
                ("TRANSPORTS", transports.to_string()),
            ],
        );
        let connected = script.next("connect");
        assert_eq!(connected["n"], 1);
        assert_eq!(connected["transport"], engine_transport(transports));
        let mut holder = None;
        for (i, gw) in gws.iter().enumerate() {
            if metric(&gw.metrics().await, "gateway_connections", "") >= 1.0 {
                holder = Some(i);
            }
        }
        let holder = holder.expect("one gateway holds the client");
        let status = tokio::task::block_in_place(|| gws[holder].terminate());
        assert!(status.success(), "{transports}: {status:?}");
        let reason = script.next("disconnect")["reason"].clone();
        assert!(
            reason == "transport close" || reason == "transport error",
            "{transports}: the drain must look like a lost transport, not {reason}"
        );
        // A WebSocket's connection is shut down, a long-polling session's pending GET gets the
        // Engine.IO close packet: "transport close" to the stock client ("transport error" is
        // a poll that failed instead). Checked once every configuration went through the rest.
        if reason != "transport close" {
            not_closed.push(format!("{transports}: {reason}"));
        }
        let reconnected = script.next("connect");
        assert_eq!(reconnected["n"], 2, "{transports}: no automatic reconnect");
        assert_eq!(
            reconnected["transport"],
            engine_transport(transports),
            "{transports}"
        );
        let other = &gws[1 - holder];
        let body = serde_json::json!({
            "channel": "incident", "event": "incident_resolved", "institutionId": 1,
            "payload": { "incidentId": 9, "resolution": "ok", "resolvedBy": 1, "resolvedByName": "A",
                         "resolvedAt": "2026-11-28T10:00:00Z", "institutionId": 1 }
        });
        let (s, b) = other.publish(&body).await;
        assert_eq!(s, 200, "{b}");
        let ev = script.next("event");
        assert_eq!(ev["id"], b["id"], "{transports}");
        assert!(tokio::task::block_in_place(|| script.success()));
        gws.clear();
    }
    assert!(
        not_closed.is_empty(),
        "the drain must close the transport (\"transport close\"), not {not_closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_lose_nothing_when_a_gateway_is_killed() {
    let redis = RedisServer::start();
    for transports in TRANSPORTS {
        let (mut gws, nginx) = cluster(&redis, 3).await;
        let tokens: Vec<serde_json::Value> = (0..6)
            .map(|i| {
                let sub = format!("{}", 200 + i);
                serde_json::json!({ "sub": sub, "token": common::token(&sub, "1", "STUDENT", 600) })
            })
            .collect();
        let mut script = Script::start(
            "failover-clients.mjs",
            &[
                ("LB_URL", nginx.url()),
                ("TOKENS", serde_json::Value::from(tokens).to_string()),
                ("TRANSPORTS", transports.to_string()),
            ],
        );
        tokio::task::block_in_place(|| script.next("ready"));
        let mut held = Vec::new();
        for gw in &gws {
            held.push(metric(&gw.metrics().await, "gateway_connections", ""));
        }
        let victim = (0..3).max_by(|a, b| held[*a].total_cmp(&held[*b])).unwrap();

        let stop = tokio_util::sync::CancellationToken::new();
        let count = Published::default();
        let publishing = publish_steadily(publisher(&redis), 300, stop.clone(), count.clone());
        published_at_least(&count, 200).await;
        gws[victim].kill();
        published_at_least(&count, 600).await;
        stop.cancel();
        let last = publishing.await.unwrap();
        script.send_line(&serde_json::to_string(&last).unwrap());
        let done = tokio::task::block_in_place(|| script.next("done"));
        assert!(
            done["reconnects"].as_f64().unwrap_or(0.0) >= held[victim],
            "{transports}: the victim's {} clients must have reconnected: {done}",
            held[victim]
        );
        assert!(
            tokio::task::block_in_place(|| script.success()),
            "{transports}"
        );
        assert!(last["exam:1"] > 100, "too little traffic: {last:?}");
    }
}
