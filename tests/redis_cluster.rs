//! Gateways on a real Redis Cluster (3 primaries, 3 replicas, Debian's `redis-server`): rooms
//! spread over every shard, a busy room's slot migrated under load, a primary killed under load,
//! and a gateway that knows a single seed node.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::client::Client;
use common::redis_cluster::{room_slot, RedisCluster};
use common::resilient::Resilient;
use common::{batch_created, Gateway, QUIET, WAIT};
use serde_json::json;
use tokio::sync::Mutex;

fn gateway(seeds: &str) -> Gateway {
    Gateway::start(&[
        ("REDIS_CLUSTER_NODES", seeds),
        ("GATEWAY_REDIS_TIMEOUT", "500ms"),
        ("GATEWAY_UNSUBSCRIBE_DELAY", "100ms"),
    ])
}

async fn ready_gateways(seeds: &[String]) -> Vec<Gateway> {
    let gws: Vec<Gateway> = seeds.iter().map(|s| gateway(s)).collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }
    gws
}

/// `per_shard` rooms (`batch:<n>` of tenant 1) on each primary of the cluster.
fn rooms_on_every_shard(cluster: &RedisCluster, per_shard: usize) -> Vec<String> {
    let mut by_owner: HashMap<usize, Vec<String>> = HashMap::new();
    let mut n = 0;
    while by_owner.len() < 3 || by_owner.values().any(|r| r.len() < per_shard) {
        n += 1;
        let room = format!("batch:{n}");
        let owner = cluster
            .owner(room_slot(&format!("1/{room}")))
            .expect("every slot has an owner");
        let rooms = by_owner.entry(owner).or_default();
        if rooms.len() < per_shard {
            rooms.push(room);
        }
    }
    let mut rooms: Vec<String> = by_owner.into_values().flatten().collect();
    rooms.sort();
    rooms
}

async fn member(gw: &Gateway, sub: &str, rooms: &[String]) -> Client {
    let c = gw.client(sub, "1", "ADMIN").await;
    for room in rooms {
        let ack = c
            .request("join", &json!(room), WAIT)
            .await
            .expect("join ack");
        assert_eq!(ack["ok"], true, "{ack}");
    }
    c
}

#[tokio::test]
async fn rooms_on_all_three_shards_reach_every_member_once_in_order_even_from_a_single_seed() {
    let cluster = RedisCluster::start();
    // The third gateway knows one node only and must find the other primaries by itself.
    let seeds = vec![cluster.seeds(), cluster.seeds(), cluster.nodes[0].url()];
    let gws = ready_gateways(&seeds).await;
    let rooms = rooms_on_every_shard(&cluster, 2);
    let owners: BTreeSet<usize> = rooms
        .iter()
        .filter_map(|r| cluster.owner(room_slot(&format!("1/{r}"))))
        .collect();
    assert_eq!(owners.len(), 3, "rooms {rooms:?} do not cover every shard");

    let mut members = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for m in 0..2 {
            members.push((g, member(gw, &format!("{}", 10 + g * 2 + m), &rooms).await));
        }
    }
    let events_per_room = 15i64;
    for i in 1..=events_per_room {
        for (r, room) in rooms.iter().enumerate() {
            let gw = &gws[(i as usize + r) % gws.len()];
            let (status, body) = gw.publish(&batch_created(1, &[room], i)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["rooms"][0]["offset"], i, "{body}");
        }
    }
    for (g, c) in members.iter_mut() {
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        let total = rooms.len() * events_per_room as usize;
        for _ in 0..total {
            let e = c
                .wait_for("batch_update", WAIT)
                .await
                .unwrap_or_else(|| panic!("a member on gateway {g} stopped after {seen:?}"));
            let room = e["room"].as_str().unwrap_or_default().to_string();
            let offset = e["offset"].as_i64().unwrap_or(-1);
            assert_eq!(e["payload"]["batchId"], offset, "{e}");
            seen.entry(room).or_default().push(offset);
        }
        for room in &rooms {
            let want: Vec<i64> = (1..=events_per_room).collect();
            assert_eq!(seen.get(room), Some(&want), "gateway {g}, room {room}");
        }
        assert!(
            c.wait_for("batch_update", QUIET).await.is_none(),
            "a member on gateway {g} got an event twice"
        );
    }
    // The function library is on every primary, each with its own copy.
    for node in cluster.primaries() {
        let list =
            cluster.nodes[node].cli(&["FUNCTION", "LIST", "LIBRARYNAME", "realtime_gateway"]);
        assert!(list.contains("rtg_publish"), "node {node}: {list}");
    }
}

/// What a publishing load saw.
#[derive(Default)]
struct Load {
    /// Publishes answered 200.
    ok: AtomicU64,
    /// Publishes answered 503.
    unavailable: AtomicU64,
    /// Per room: the offset of the last answer, and the highest offset answered.
    offsets: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

/// Publishes `batch_created` events to `rooms` at about `rate` per second, round-robin over the
/// gateways, with at most `in_flight` requests at once, until `stop`. Any answer but 200 or 503
/// fails the test.
async fn publish_load(
    gws: Vec<Arc<Gateway>>,
    rooms: Vec<String>,
    rate: u64,
    in_flight: usize,
    load: Arc<Load>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0usize;
    while !stop.is_cancelled() {
        tick.tick().await;
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        i += 1;
        let room = rooms[i % rooms.len()].clone();
        let gw = gws[i % gws.len()].clone();
        let load = load.clone();
        tasks.spawn(async move {
            let (status, body) = gw.publish(&batch_created(1, &[&room], i as i64)).await;
            match status {
                200 => {
                    let offset = body["rooms"][0]["offset"].as_u64().unwrap_or(0);
                    let mut offsets = load.offsets.lock().unwrap();
                    let (last, max) = offsets.entry(room).or_default();
                    *last = offset;
                    *max = (*max).max(offset);
                    load.ok.fetch_add(1, Ordering::SeqCst);
                }
                503 => {
                    load.unavailable.fetch_add(1, Ordering::SeqCst);
                }
                other => panic!("publish answered {other}: {body}"),
            }
            drop(permit);
        });
        while let Some(done) = tasks.try_join_next() {
            done.expect("publish task");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("publish task");
    }
}

/// Waits until `load` has `n` acknowledged publishes (a progress condition, not a duration).
async fn wait_published(load: &Load, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while load.ok.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} publishes acknowledged",
            load.ok.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `clients` (each in its own task) until `stop`, then lets them settle on `expected`.
fn pump(
    clients: Vec<Resilient>,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<Resilient>> {
    clients
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    c.run_for(Duration::from_millis(100)).await;
                }
                c
            })
        })
        .collect()
}

#[tokio::test]
async fn a_busy_rooms_slot_migrates_under_300_events_per_second_without_loss_or_reconnect() {
    let cluster = Arc::new(RedisCluster::start());
    let gws: Vec<Arc<Gateway>> = ready_gateways(&vec![cluster.seeds(); 3])
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let room = "batch:7".to_string();
    let slot = room_slot("1/batch:7");
    let from = cluster.owner(slot).expect("owner");
    let to = cluster
        .primaries()
        .into_iter()
        .find(|n| *n != from)
        .expect("another primary");

    let mut clients = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for m in 0..2 {
            clients.push(
                Resilient::connect(&gw.url(), &format!("{}", 20 + g * 2 + m), "1", &[&room]).await,
            );
        }
    }
    let stop_clients = tokio_util::sync::CancellationToken::new();
    let running = pump(clients, stop_clients.clone());
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = Arc::new(Load::default());
    let publishing = tokio::spawn(publish_load(
        gws.clone(),
        vec![room.clone()],
        300,
        8,
        load.clone(),
        stop_load.clone(),
    ));

    // Move the slot once events flow, and keep publishing as long again after it moved.
    wait_published(&load, 300).await;
    let moving = cluster.clone();
    tokio::task::spawn_blocking(move || moving.migrate_slot(slot, to))
        .await
        .expect("migration");
    assert_eq!(cluster.owner(slot), Some(to));
    wait_published(&load, load.ok.load(Ordering::SeqCst) + 300).await;
    stop_load.cancel();
    publishing.await.expect("load");
    stop_clients.cancel();

    let ok = load.ok.load(Ordering::SeqCst);
    let (_, last) = load.offsets.lock().unwrap()[&room];
    // A 503 is allowed (the publisher knows); every acknowledged event must be in the room.
    assert!(
        last >= ok,
        "{ok} publishes acknowledged but the room ends at {last}"
    );
    let expected = HashMap::from([(room.clone(), last)]);
    for handle in running {
        let mut c = handle.await.expect("client task");
        c.settle(&expected).await;
        c.check(&room, last).unwrap();
        assert_eq!(c.reconnects, 0, "a client reconnected");
        assert!(c.resyncs.is_empty(), "resync: {:?}", c.resyncs);
        assert!(c.rooms[&room].not_recovered.is_empty());
    }
    for gw in &gws {
        assert!(
            gw.log().contains("subscribing on the new owner") || gw.log().contains("new owner"),
            "a gateway did not follow the slot:\n{}",
            gw.log()
        );
    }
}

#[tokio::test]
async fn a_primary_killed_under_load_loses_nothing_silently() {
    let mut cluster = RedisCluster::start();
    let gws: Vec<Arc<Gateway>> = ready_gateways(&vec![cluster.seeds(); 3])
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let rooms = rooms_on_every_shard(&cluster, 1);
    let victim_room = rooms[0].clone();
    let victim_slot = room_slot(&format!("1/{victim_room}"));

    let mut clients = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        let joined: Vec<&str> = rooms.iter().map(String::as_str).collect();
        clients.push(Resilient::connect(&gw.url(), &format!("{}", 30 + g), "1", &joined).await);
    }
    let stop_clients = tokio_util::sync::CancellationToken::new();
    let running = pump(clients, stop_clients.clone());
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = Arc::new(Load::default());
    // One request at a time, so each room's last answer is its position in its newest epoch.
    let publishing = tokio::spawn(publish_load(
        gws.clone(),
        rooms.clone(),
        150,
        1,
        load.clone(),
        stop_load.clone(),
    ));

    wait_published(&load, 100).await;
    let old = cluster.kill_owner(victim_slot);
    let cluster = Arc::new(Mutex::new(cluster));
    let waiting = cluster.clone();
    let new = tokio::task::spawn_blocking(move || {
        let c = waiting.blocking_lock();
        c.wait_failover(victim_slot, old)
    })
    .await
    .expect("failover");
    assert_ne!(new, old);
    wait_published(&load, load.ok.load(Ordering::SeqCst) + 150).await;
    stop_load.cancel();
    publishing.await.expect("load");
    stop_clients.cancel();
    let ok = load.ok.load(Ordering::SeqCst);
    let unavailable = load.unavailable.load(Ordering::SeqCst);
    let last: HashMap<String, u64> = load
        .offsets
        .lock()
        .unwrap()
        .iter()
        .map(|(room, (last, _))| (room.clone(), *last))
        .collect();

    for handle in running {
        let mut c = handle.await.expect("client task");
        c.settle(&last).await;
        for room in &rooms {
            let log = &c.rooms[room];
            if *room != victim_room {
                c.check(room, last[room]).unwrap();
                assert!(log.resync_at.is_empty() && log.not_recovered.is_empty());
                continue;
            }
            // The killed primary's rooms start a new epoch, and the client is told so; within
            // each epoch it holds every offset once, in order, up to the room's last one.
            assert!(
                !log.resync_at.is_empty() || !log.not_recovered.is_empty(),
                "client {} was not told that {room} restarted: {:?}",
                c.rooms.len(),
                log.offsets
            );
            let mut bounds = log.resync_at.clone();
            bounds.push(log.offsets.len());
            let mut start = 0;
            for end in bounds {
                let segment = &log.offsets[start..end];
                assert!(
                    segment.windows(2).all(|w| w[1] == w[0] + 1),
                    "{room}: an offset skipped or repeated within one epoch: {:?}",
                    log.offsets
                );
                start = end;
            }
            assert_eq!(
                log.offsets.last(),
                Some(&last[room]),
                "{room}: {:?}",
                log.offsets
            );
        }
    }
    // Publishes during the failover answered 200 or 503, nothing else (checked as they ran).
    assert!(
        ok > 0 && unavailable < ok,
        "{ok} published, {unavailable} refused"
    );
}
