//! Lossless delivery against real processes: a client offline while events flow, a Redis
//! subscription cut, Redis restarted with and without persistence.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::publish::{incident as event, key, publisher};
use common::redis_server::RedisServer;
use common::resilient::Resilient;
use common::{metric, Gateway};
use realtime_gateway::Publisher;

/// Publishes `n` events round-robin over `rooms`; returns the last offset per room.
async fn publish_many(
    p: &Publisher,
    rooms: &[&str],
    n: u64,
    start: u64,
    last: &mut HashMap<String, u64>,
) {
    for i in 0..n {
        let room = rooms[(i as usize) % rooms.len()];
        let placed = p
            .publish(&event(start + i), &[key("1", room)])
            .await
            .expect("publish");
        last.insert(room.to_string(), placed[0].0);
    }
}

/// Every room has every offset up to `last` once, in order, and no recovery was refused.
fn assert_all_recovered(c: &Resilient, rooms: &[&str], last: &HashMap<String, u64>) {
    for room in rooms {
        c.check(room, last[*room]).unwrap();
        assert!(
            c.rooms[*room].not_recovered.is_empty(),
            "{room}: {:?}",
            c.rooms[*room].not_recovered
        );
    }
}

async fn redis_gateway(redis: &RedisServer) -> Gateway {
    let gw = Gateway::start(&[
        ("REDIS_URL", &redis.url()),
        ("GATEWAY_REDIS_TIMEOUT", "500ms"),
    ]);
    gw.wait_readyz(200).await;
    gw
}

#[tokio::test]
async fn a_client_offline_while_500_events_flow_gets_all_of_them_once_in_order() {
    let redis = RedisServer::start();
    let gw = redis_gateway(&redis).await;
    let p = publisher(&redis);
    let rooms = ["batch:456", "institution:1", "user:10"];
    let mut c = Resilient::connect(&gw.url(), "10", "1", &["batch:456"]).await;
    let mut last = HashMap::new();
    publish_many(&p, &rooms, 30, 0, &mut last).await;
    c.settle(&last).await;

    c.go_offline().await;
    publish_many(&p, &rooms, 500, 30, &mut last).await;
    c.come_back().await;
    publish_many(&p, &rooms, 30, 530, &mut last).await;
    c.settle(&last).await;

    assert_all_recovered(&c, &rooms, &last);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "gateway_recoveries_total", "result=\"recovered\""),
        3.0,
        "{m}"
    );
    assert!(
        metric(&m, "gateway_events_replayed_total", "") >= 500.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_cut_redis_subscription_loses_nothing() {
    let redis = RedisServer::start();
    let gws = [redis_gateway(&redis).await, redis_gateway(&redis).await];
    let p = publisher(&redis);
    let rooms = ["exam:1", "institution:1"];
    let mut clients = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        clients.push(Resilient::connect(&gw.url(), &format!("{}", 10 + i), "1", &["exam:1"]).await);
    }
    let mut last = HashMap::new();
    let rounds = Arc::new(AtomicU64::new(0));
    let publishing = {
        let p = p.clone();
        let rounds = rounds.clone();
        tokio::spawn(async move {
            let mut last = HashMap::new();
            for round in 0..30u64 {
                publish_many(&p, &rooms, 20, round * 20, &mut last).await;
                rounds.store(round + 1, Ordering::SeqCst);
                // Paced, so the cuts below land while events are flowing.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last
        })
    };
    // Cut every gateway's subscription connection three times while events flow: after
    // rounds 5, 12 and 19 of 30.
    for after in [5, 12, 19] {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        while rounds.load(Ordering::SeqCst) < after {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the publisher stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(
            killed.trim().parse::<u32>().unwrap_or(0) >= 1,
            "no subscriber to cut: {killed}"
        );
    }
    last.extend(publishing.await.unwrap());
    for c in clients.iter_mut() {
        c.settle(&last).await;
        for room in rooms {
            c.check(room, last[room]).unwrap();
        }
        assert_eq!(c.reconnects, 0, "clients must not notice a Redis blip");
    }
    for gw in &gws {
        let m = gw.metrics().await;
        assert!(
            metric(&m, "gateway_gap_reads_total", "result=\"recovered\"") >= 1.0,
            "{m}"
        );
    }
}

#[tokio::test]
async fn redis_restarted_without_persistence_makes_clients_resync() {
    let mut redis = RedisServer::start();
    let gw = redis_gateway(&redis).await;
    let p = publisher(&redis);
    let mut stays = Resilient::connect(&gw.url(), "10", "1", &["exam:2"]).await;
    let mut leaves = Resilient::connect(&gw.url(), "11", "1", &["exam:2"]).await;
    let mut last = HashMap::new();
    publish_many(&p, &["exam:2"], 10, 0, &mut last).await;
    stays.settle(&last).await;
    leaves.settle(&last).await;
    leaves.go_offline().await;

    redis.restart();
    gw.wait_readyz(200).await;
    let mut after = HashMap::new();
    publish_many(&p, &["exam:2"], 5, 10, &mut after).await;
    assert_eq!(after["exam:2"], 5, "a lost history restarts its offsets");

    assert!(
        stays.wait_resync("exam:2").await,
        "a connected client was not told to resync: {:?}",
        stays.resyncs
    );
    leaves.come_back().await;
    assert_eq!(
        leaves.rooms["exam:2"].not_recovered,
        vec!["epoch_changed".to_string()]
    );
    let m = gw.metrics().await;
    assert!(metric(&m, "gateway_resyncs_total", "") >= 1.0, "{m}");
    assert!(
        metric(&m, "gateway_recoveries_total", "result=\"epoch_changed\"") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn redis_restarted_with_an_append_only_file_recovers_everything() {
    let mut redis = RedisServer::start_with(true);
    let gw = redis_gateway(&redis).await;
    let p = publisher(&redis);
    let rooms = ["exam:3", "institution:1"];
    let mut c = Resilient::connect(&gw.url(), "10", "1", &["exam:3"]).await;
    let mut last = HashMap::new();
    publish_many(&p, &rooms, 20, 0, &mut last).await;
    c.settle(&last).await;
    c.go_offline().await;
    publish_many(&p, &rooms, 40, 20, &mut last).await;

    redis.restart();
    gw.wait_readyz(200).await;
    publish_many(&p, &rooms, 40, 60, &mut last).await;
    c.come_back().await;
    c.settle(&last).await;
    assert_all_recovered(&c, &rooms, &last);
    assert_eq!(last["exam:3"], 50, "offsets continue across the restart");
}
