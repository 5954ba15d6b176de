//! Several gateways sharing one real `redis-server`: cross-instance delivery, contiguous
//! offsets under concurrent publishers, subscription lifecycle, history cap, Redis restarts and
//! garbage on the bus.

mod common;

use std::time::Duration;

use common::client::Client;
use common::redis_server::RedisServer;
use common::{batch_created, metric, Gateway, KEY, QUIET, WAIT};
use serde_json::{json, Value};

fn gateway(redis: &RedisServer, extra: &[(&str, &str)]) -> Gateway {
    let url = redis.url();
    let mut env = vec![
        ("REDIS_URL", url.as_str()),
        ("GATEWAY_UNSUBSCRIBE_DELAY", "100ms"),
    ];
    env.extend_from_slice(extra);
    Gateway::start(&env)
}

async fn ready_gateways(redis: &RedisServer, n: usize, extra: &[(&str, &str)]) -> Vec<Gateway> {
    let gws: Vec<Gateway> = (0..n).map(|_| gateway(redis, extra)).collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }
    gws
}

async fn joined(gw: &Gateway, sub: &str, tenant: &str, room: &str) -> Client {
    let c = gw.client(sub, tenant, "ADMIN").await;
    let ack = c
        .request("join", &json!(room), WAIT)
        .await
        .expect("join ack");
    assert_eq!(ack["ok"], true, "{ack}");
    c
}

/// Calls `rtg_publish` from `redis-cli` for `room` (`<tenant>/<kind>:<id>`), the way a backend
/// in any language would; returns what redis-cli printed.
fn fcall_publish(redis: &RedisServer, room: &str, envelope: &str) -> String {
    let (h, m, c) = (
        format!("rtg:{{{room}}}:h"),
        format!("rtg:{{{room}}}:m"),
        format!("rtg:{{{room}}}"),
    );
    redis.cli(&[
        "FCALL",
        "rtg_publish",
        "2",
        &h,
        &m,
        &c,
        envelope,
        "1000",
        "3600",
    ])
}

/// The payload of a batch_created event as the Redis function expects it, for raw FCALLs.
fn raw_envelope(id: &str, tenant: i64, batch: i64) -> String {
    let mut body = batch_created(tenant, &[], batch);
    let payload = body["payload"].take();
    json!({
        "id": id, "channel": "batch_update", "event": "batch_created", "institutionId": tenant,
        "payload": payload, "timestamp": common::now() * 1000
    })
    .to_string()
}

#[tokio::test]
async fn events_reach_every_member_on_every_gateway_and_no_one_else() {
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 3, &[]).await;
    let mut members = Vec::new();
    for gw in &gws {
        members.push(joined(gw, "10", "1", "batch:456").await);
        members.push(joined(gw, "11", "1", "batch:456").await);
    }
    let mut outsider_room = joined(&gws[1], "12", "1", "batch:999").await;
    let mut other_tenant = joined(&gws[2], "10", "2", "batch:456").await;

    // 1. HTTP on gateway A.
    let (s, b) = gws[0].publish(&batch_created(1, &["batch:456"], 1)).await;
    assert_eq!(s, 200, "{b}");
    // 2. The Redis function, called by a plain Redis client.
    let out = fcall_publish(&redis, "1/batch:456", &raw_envelope("from-redis-cli", 1, 2));
    assert!(
        out.lines().next().unwrap_or("").trim() == "2",
        "FCALL answered {out}"
    );
    // 3. The CLI against gateway C.
    let payload = batch_created(1, &[], 3)["payload"].to_string();
    let cli = common::cli_publish(
        &gws[2].url(),
        "batch_update",
        "batch_created",
        &payload,
        Some("batch:456"),
    );
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    for (i, m) in members.iter_mut().enumerate() {
        for want in 1..=3u64 {
            let e = m
                .wait_for("batch_update", WAIT)
                .await
                .unwrap_or_else(|| panic!("member {i} missed offset {want}"));
            assert_eq!(e["offset"], want, "member {i}: {e}");
            assert_eq!(e["payload"]["batchId"], want, "member {i}: {e}");
        }
    }
    assert!(
        outsider_room
            .wait_for("batch_update", QUIET)
            .await
            .is_none(),
        "a non-member got the event"
    );
    assert!(
        other_tenant.wait_for("batch_update", QUIET).await.is_none(),
        "another tenant got the event"
    );
    // The id given to FCALL is what clients see.
    let mut fresh = joined(&gws[1], "13", "1", "batch:456").await;
    fcall_publish(&redis, "1/batch:456", &raw_envelope("evt-42", 1, 4));
    assert_eq!(
        fresh.wait_for("batch_update", WAIT).await.unwrap()["id"],
        "evt-42"
    );
}

#[tokio::test]
async fn the_function_refuses_bad_envelopes_with_a_clear_error() {
    let redis = RedisServer::start();
    let _gw = ready_gateways(&redis, 1, &[]).await;
    let call = |keys: [&str; 3], body: &str| {
        redis.cli(&[
            "FCALL",
            "rtg_publish",
            "2",
            keys[0],
            keys[1],
            keys[2],
            body,
            "1000",
            "3600",
        ])
    };
    let keys = ["rtg:{1/batch:1}:h", "rtg:{1/batch:1}:m", "rtg:{1/batch:1}"];
    assert!(call(keys, "not json").contains("not a JSON object"));
    assert!(call(
        keys,
        r#"{"channel":"a","event":"b","payload":{},"timestamp":1,"institutionId":1}"#
    )
    .contains("envelope.id"));
    let other_tenant = raw_envelope("x", 2, 1);
    assert!(call(keys, &other_tenant).contains("must equal the tenant"));
    assert_eq!(
        redis.cli(&["EXISTS", keys[1]]).trim(),
        "0",
        "a refused call wrote something"
    );
    let version = redis.cli(&["FCALL_RO", "rtg_version", "0"]);
    assert_eq!(
        version.trim(),
        realtime_gateway::FUNCTION_VERSION.to_string()
    );
}

#[tokio::test]
async fn concurrent_publishers_give_contiguous_ordered_offsets_everywhere() {
    const EVENTS: usize = 10_000;
    const BATCH: usize = 50;
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 3, &[("GATEWAY_HISTORY_MAX_LEN", "20000")]).await;
    let mut clients = Vec::new();
    for gw in &gws {
        clients.push(joined(gw, "10", "1", "exam:1").await);
        clients.push(joined(gw, "11", "1", "exam:1").await);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut offsets = Vec::with_capacity(EVENTS);
                while offsets.len() < EVENTS {
                    match c.wait_for("batch_update", WAIT).await {
                        Some(e) => offsets.push(e["offset"].as_u64().unwrap()),
                        None => break,
                    }
                }
                offsets
            })
        })
        .collect();
    let publishers: Vec<_> = [gws[0].url(), gws[1].url()]
        .into_iter()
        .enumerate()
        .map(|(p, url)| {
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for chunk in 0..(EVENTS / 2 / BATCH) {
                    let batch: Vec<Value> = (0..BATCH)
                        .map(|i| {
                            batch_created(1, &["exam:1"], (p * EVENTS + chunk * BATCH + i) as i64)
                        })
                        .collect();
                    let r = http
                        .post(format!("{url}/v1/publish/batch"))
                        .bearer_auth(KEY)
                        .json(&batch)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let want: Vec<u64> = (1..=EVENTS as u64).collect();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.unwrap();
        assert_eq!(
            got.len(),
            EVENTS,
            "client {i} received {} of {EVENTS}",
            got.len()
        );
        assert!(got == want, "client {i}: offsets not 1..={EVENTS} in order");
    }
}

#[tokio::test]
async fn subscriptions_follow_members_and_history_is_capped() {
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 2, &[("GATEWAY_HISTORY_MAX_LEN", "50")]).await;
    let numsub = || -> u64 {
        let out = redis.cli(&["PUBSUB", "NUMSUB", "rtg:{1/batch:77}"]);
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    };
    let a = joined(&gws[0], "10", "1", "batch:77").await;
    let b = joined(&gws[1], "11", "1", "batch:77").await;
    assert_eq!(numsub(), 2, "both gateways serve the room");
    let ack = b.request("leave", &json!("batch:77"), WAIT).await.unwrap();
    assert_eq!(ack["ok"], true);
    wait_until(
        || numsub() == 1,
        "gateway B unsubscribes after its last member left",
    )
    .await;
    let m = gws[1].metrics().await;
    assert_eq!(
        metric(&m, "gateway_redis_subscriptions", ""),
        2.0,
        "B keeps only its members' auto rooms\n{m}"
    );
    a.close().await;
    wait_until(
        || numsub() == 0,
        "gateway A unsubscribes after its member disconnected",
    )
    .await;

    for i in 0..120 {
        let (s, _) = gws[0].publish(&batch_created(1, &["batch:77"], i)).await;
        assert_eq!(s, 200);
    }
    assert_eq!(
        redis.cli(&["XLEN", "rtg:{1/batch:77}:h"]).trim(),
        "50",
        "history exceeds its cap"
    );
    let meta = redis.cli(&["HGET", "rtg:{1/batch:77}:m", "offset"]);
    assert_eq!(meta.trim(), "120");
    let ttl: i64 = redis
        .cli(&["TTL", "rtg:{1/batch:77}:h"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "history has no TTL");
}

async fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_redis_restart_heals_without_client_reconnects() {
    let mut redis = RedisServer::start();
    let mut gws = ready_gateways(&redis, 2, &[("GATEWAY_REDIS_TIMEOUT", "500ms")]).await;
    let mut c0 = joined(&gws[0], "10", "1", "batch:5").await;
    let mut c1 = joined(&gws[1], "11", "1", "batch:5").await;
    let (s, _) = gws[0].publish(&batch_created(1, &["batch:5"], 1)).await;
    assert_eq!(s, 200);
    for c in [&mut c0, &mut c1] {
        assert_eq!(c.wait_for("batch_update", WAIT).await.unwrap()["offset"], 1);
    }

    redis.kill();
    for gw in &gws {
        gw.wait_readyz(503).await;
    }
    let (s, b) = gws[1].publish(&batch_created(1, &["batch:5"], 2)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("bus_unavailable")),
        "{b}"
    );

    redis.restart();
    for gw in gws.iter_mut() {
        gw.wait_readyz(200).await;
        assert!(gw.is_running(), "a gateway exited during the outage");
    }
    let (s, b) = gws[1].publish(&batch_created(1, &["batch:5"], 3)).await;
    assert_eq!(s, 200, "{b}");
    for (i, c) in [&mut c0, &mut c1].into_iter().enumerate() {
        // Redis kept nothing: the room's history is gone, so the gateway says so first.
        let (name, r) = c
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("client {i}: nothing after the restart"));
        assert_eq!(
            (name.as_str(), r["room"].as_str()),
            ("resync", Some("batch:5")),
            "client {i}: {r}"
        );
        let (name, e) = c
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("client {i}: no event after the restart"));
        assert_eq!(
            name, "batch_update",
            "client {i} saw {name} (it must not have been disconnected)"
        );
        assert_eq!(e["payload"]["batchId"], 3);
        assert_eq!(e["offset"], 1, "a new epoch starts at offset 1");
    }
    let m = gws[0].metrics().await;
    assert!(
        metric(&m, "gateway_redis_reconnects_total", "") >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "gateway_redis_up", ""), 1.0, "{m}");
    assert_eq!(metric(&m, "gateway_disconnects_total", ""), 0.0, "{m}");
}

#[tokio::test]
async fn garbage_on_a_room_channel_is_counted_and_dropped() {
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 1, &[]).await;
    let mut c = joined(&gws[0], "10", "1", "batch:8").await;
    let channel = "rtg:{1/batch:8}";
    let garbage = [
        "not a frame".to_string(),
        "1|epoch|{broken json".to_string(),
        format!("2|epoch|{}", raw_envelope("x", 2, 1)),
        "3|epoch|{\"id\":\"x\",\"channel\":\"connect\",\"event\":\"e\",\"institutionId\":1,\"payload\":{},\"timestamp\":1}".to_string(),
    ];
    for g in &garbage {
        assert_eq!(redis.cli(&["PUBLISH", channel, g]).trim(), "1");
    }
    let (s, _) = gws[0].publish(&batch_created(1, &["batch:8"], 8)).await;
    assert_eq!(s, 200);
    let (name, e) = c.next_event(WAIT).await.expect("valid event after garbage");
    assert_eq!(
        (name.as_str(), e["payload"]["batchId"].as_i64()),
        ("batch_update", Some(8))
    );
    let m = gws[0].metrics().await;
    for reason in [
        "bad_frame",
        "bad_envelope",
        "tenant_mismatch",
        "unknown_channel",
    ] {
        assert_eq!(
            metric(
                &m,
                "gateway_bus_invalid_total",
                &format!("reason=\"{reason}\"")
            ),
            1.0,
            "{reason}\n{m}"
        );
    }
    assert!(
        gws[0].log().contains("invalid message on the bus"),
        "{}",
        gws[0].log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_client_on_every_gateway_and_through_nginx_gets_every_publish_path() {
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 3, &[]).await;
    let nginx = common::lb::Nginx::start(&gws.iter().map(|g| g.public).collect::<Vec<_>>());
    let mut targets: Vec<String> = gws.iter().map(|g| g.url()).collect();
    targets.push(nginx.url());
    let script = common::node::Script::start(
        "cluster-clients.mjs",
        &[
            ("TARGETS", targets.join(",")),
            ("TOKEN", common::token("10", "1", "STUDENT", 600)),
            ("OUTSIDER_TOKEN", common::token("11", "1", "STUDENT", 600)),
            ("EXPECT", "3".into()),
        ],
    );
    let ready = tokio::task::block_in_place(|| script.next("ready"));
    assert_eq!(
        ready["sockets"], 8,
        "two transports on three gateways and the balancer"
    );

    let (s, b) = gws[0].publish(&batch_created(1, &["batch:456"], 1)).await;
    assert_eq!(s, 200, "{b}");
    let out = fcall_publish(&redis, "1/batch:456", &raw_envelope("via-fcall", 1, 2));
    assert_eq!(out.lines().next().unwrap_or("").trim(), "2", "{out}");
    let payload = batch_created(1, &[], 3)["payload"].to_string();
    let cli = common::cli_publish(
        &gws[2].url(),
        "batch_update",
        "batch_created",
        &payload,
        Some("batch:456"),
    );
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    let done = tokio::task::block_in_place(|| script.next("done"));
    assert_eq!(done["sockets"], 8);
    assert!(tokio::task::block_in_place(|| script.success()));
}

/// Clients join `exam:1` while 2,000 events stream into it: a first one reads the room's
/// position from the bus (possibly ahead of what the relay has relayed yet), the others, at
/// once, are placed at the relay's own head without a read. Each must get exactly the offsets
/// after the one its join ack reported, in order, once.
async fn joins_mid_stream_get_exactly_what_follows(gw: &Gateway) {
    const TOTAL: u64 = 2_000;
    const BATCH: u64 = 20;
    const JOINERS: usize = 40;
    let url = gw.url();
    let mut clients = Vec::new();
    for i in 0..JOINERS {
        clients.push(gw.client(&format!("{}", 100 + i), "1", "ADMIN").await);
    }
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for chunk in 0..TOTAL / BATCH {
            let batch: Vec<Value> = (0..BATCH)
                .map(|i| batch_created(1, &["exam:1"], (chunk * BATCH + i) as i64))
                .collect();
            let r = http
                .post(format!("{url}/v1/publish/batch"))
                .bearer_auth(KEY)
                .json(&batch)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    // Let the stream start, then everyone joins at the same moment.
    gw.wait_metrics("publishing started", |m| {
        metric(m, "gateway_events_published_total", "") >= 200.0
    })
    .await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let ack = c
                    .request("join", &json!("exam:1"), WAIT)
                    .await
                    .expect("join ack");
                assert_eq!(ack["ok"], true, "{ack}");
                let from = ack["offset"].as_u64().expect("join ack has an offset");
                let mut got = Vec::new();
                let mut last = from;
                while last < TOTAL {
                    let Some(e) = c.wait_for("batch_update", WAIT).await else {
                        break;
                    };
                    last = e["offset"].as_u64().unwrap();
                    got.push(last);
                }
                (from, got)
            })
        })
        .collect();
    publisher.await.unwrap();
    let mut mid_stream = 0;
    for r in readers {
        let (from, got) = r.await.unwrap();
        let want: Vec<u64> = (from + 1..=TOTAL).collect();
        assert!(
            got == want,
            "joined at {from}: got {} events, first {:?}, last {:?}",
            got.len(),
            &got[..got.len().min(5)],
            got.last()
        );
        if from > 0 && from < TOTAL {
            mid_stream += 1;
        }
    }
    assert!(mid_stream > 0, "no join landed while events were flowing");
    assert!(
        gw.log().contains("room entered at the relay's head"),
        "joins took the relay's fast path"
    );
}

#[tokio::test]
async fn joins_mid_stream_get_exactly_what_follows_over_redis() {
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 1, &[]).await;
    joins_mid_stream_get_exactly_what_follows(&gws[0]).await;
}

#[tokio::test]
async fn joins_mid_stream_get_exactly_what_follows_on_the_embedded_bus() {
    let gw = Gateway::start(&[]);
    joins_mid_stream_get_exactly_what_follows(&gw).await;
}

#[tokio::test]
async fn a_leave_that_overtakes_its_own_join_leaves_the_socket_out() {
    const ROOMS: i64 = 30;
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 1, &[]).await;
    let gw = &gws[0];
    let mut c = gw.client("10", "1", "ADMIN").await;
    // Join and leave back to back without waiting: the join reads Redis while the leave is
    // already handled.
    for n in 0..ROOMS {
        c.emit("join", &json!(format!("exam:{n}"))).await.unwrap();
        c.emit("leave", &json!(format!("exam:{n}"))).await.unwrap();
    }
    // Settled once this gateway holds only the socket's automatic rooms again (some joins
    // were refused by the join rate; the others were left).
    gw.wait_metrics("rooms released", |m| metric(m, "gateway_rooms", "") == 2.0)
        .await;
    for n in 0..ROOMS {
        let (s, _) = gw
            .publish(&batch_created(1, &[&format!("exam:{n}")], n))
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = gw.publish(&batch_created(1, &["user:10"], 999)).await;
    assert_eq!(s, 200);
    // Events of one gateway reach a socket in publish order across rooms only by accident, so
    // wait for the marker and then a quiet period.
    let mut got = Vec::new();
    while let Some((name, e)) = c.next_event(QUIET * 2).await {
        if name == "notification" || e["room"] == "user:10" {
            continue;
        }
        got.push(e["room"].clone());
    }
    assert!(got.is_empty(), "events of rooms the socket left: {got:?}");
}

/// From the moment a client hears it is connected (its handshake carried a token), every event
/// published to its automatic rooms reaches it, even in a room this gateway did not serve
/// until then (its Redis subscription is made before the connect is answered). Each round
/// uses a new tenant, so each connect opens a room the gateway is not subscribed to.
#[tokio::test]
async fn a_client_gets_every_event_published_after_it_hears_connect() {
    let redis = RedisServer::start();
    let gws = ready_gateways(&redis, 2, &[]).await;
    for tenant in 100..120 {
        let token = common::token("10", &tenant.to_string(), "STUDENT", 600);
        let mut c = Client::connect(&gws[0].url(), Some(json!({ "token": token })))
            .await
            .expect("connect");
        let room = format!("institution:{tenant}");
        let (status, body) = gws[1].publish(&batch_created(tenant, &[&room], 1)).await;
        assert_eq!(status, 200, "{body}");
        let event = c.wait_for("batch_update", WAIT).await;
        assert!(
            event.as_ref().is_some_and(|e| e["id"] == body["id"]),
            "tenant {tenant}: the event published right after connect never came ({event:?}):\n{}",
            gws[0].log()
        );
        c.close().await;
    }
}
