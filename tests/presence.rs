//! Presence leases and the lifecycle stream against a real `redis-server`: several gateways'
//! fleet logic in this process (so two of them can reap the same lost gateway at the same
//! instant), and a real gateway process that exits gracefully.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::{Gateway, WAIT};
use realtime_gateway::{
    Fleet, Identity, Lifecycle, Presence, PresenceConfig, RedisSettings, RoomKey, RoomName, Socket,
    Store, TenantId, UserId,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_millis(2500);

fn settings(redis: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: redis.url(),
        prefix: "rtg".into(),
        history_max_len: 100,
        history_ttl: Duration::from_secs(60),
        pool_size: 4,
        timeout: Duration::from_secs(2),
        unsubscribe_delay: Duration::from_millis(100),
        cluster_nodes: Vec::new(),
    }
}

fn config(name: &str) -> PresenceConfig {
    PresenceConfig {
        events: ["exam".to_string()].into(),
        lease: LEASE,
        lifecycle: true,
        gateway_name: name.into(),
        ..PresenceConfig::default()
    }
}

fn identity(user: &str) -> Identity {
    Identity {
        user_id: UserId::parse(user).unwrap(),
        tenant: TenantId::parse("1").unwrap(),
        role: "STUDENT".into(),
    }
}

fn room(name: &str) -> RoomKey {
    RoomKey::new(
        TenantId::parse("1").unwrap(),
        RoomName::parse(name, 64).unwrap(),
    )
}

/// One gateway's fleet side: lease, presence and lifecycle, with their tasks running.
struct Member {
    fleet: Arc<Fleet>,
    presence: Arc<Presence>,
    lifecycle: Arc<Lifecycle>,
    stop: CancellationToken,
}

impl Member {
    /// Starts a member; `renewing` keeps its lease alive without sweeping (the test sweeps).
    async fn start(redis: &RedisServer, name: &str, renewing: bool) -> Member {
        let fleet = Fleet::new(&settings(redis), config(name)).unwrap();
        fleet.load().await.unwrap();
        fleet.renew().await.unwrap();
        let presence = Arc::new(Presence::new(config(name), Store::Redis(fleet.clone())));
        let lifecycle = Arc::new(Lifecycle::new(true));
        let stop = CancellationToken::new();
        tokio::spawn(presence.clone().run(Some(fleet.clone()), stop.clone()));
        tokio::spawn(lifecycle.clone().run(fleet.clone(), stop.clone()));
        if renewing {
            let (fleet, stop) = (fleet.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    fleet.renew().await.unwrap();
                    tokio::time::sleep(LEASE / 5).await;
                }
            });
        }
        Member {
            fleet,
            presence,
            lifecycle,
            stop,
        }
    }

    /// Socket `id` of `user` connects and enters `rooms`.
    fn connect(&self, id: u64, user: &Identity, rooms: &[&str]) {
        let s = Socket {
            id,
            identity: user,
            transport: "websocket",
        };
        self.lifecycle.authenticated(s);
        for r in rooms {
            self.presence.entered(&room(r), user);
            self.lifecycle.joined(s, &room(r));
        }
    }

    /// Waits until this member's view of `name` has `count` members.
    async fn wait_count(&self, name: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let answer = self.presence.read(&room(name)).await.unwrap();
            if answer.count == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {} members, not {count}",
                answer.count
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Field maps of a stream's entries.
async fn entries(redis: &RedisServer, key: &str) -> Vec<HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection(redis).await)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|id| {
            id.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                .collect()
        })
        .collect()
}

/// The events (`event` field) in a room's history.
async fn history(redis: &RedisServer, key: &RoomKey) -> Vec<serde_json::Value> {
    entries(redis, &format!("rtg:{{{}}}:h", key.as_str()))
        .await
        .iter()
        .map(|e| serde_json::from_str(&e["e"]).unwrap())
        .collect()
}

/// A gateway dies holding members; two others reap it at the same instant: each leave is
/// emitted once, each lost connection gets one `gateway_lost` entry, and the lease leaves the
/// registry once.
#[tokio::test]
async fn two_survivors_reaping_at_once_emit_each_leave_once() {
    let redis = RedisServer::start();
    let dead = Member::start(&redis, "dead", true).await;
    let (u1, u2) = (identity("1"), identity("2"));
    dead.connect(1, &u1, &["exam:1", "exam:2"]);
    dead.connect(2, &u1, &["exam:1"]);
    dead.connect(3, &u2, &["exam:1"]);
    // Survivors (this test decides when they sweep).
    let a = Member::start(&redis, "a", true).await;
    let b = Member::start(&redis, "b", true).await;
    // u2 also has a connection on a survivor: it stays a member, with no leave.
    a.connect(10, &u2, &["exam:1"]);
    a.wait_count("exam:1", 2).await;
    a.wait_count("exam:2", 1).await;
    let stream = "rtg:{1}:lifecycle";
    // Both lifecycle writers are done with the connects before the death.
    let deadline = tokio::time::Instant::now() + WAIT;
    while entries(&redis, stream).await.len() < 4 * 2 + 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lifecycle entries not written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The dead gateway stops renewing (its tasks end as a SIGKILL would end them).
    dead.stop.cancel();
    // Both survivors sweep together until the lease has run out and one of them reaps it.
    let deadline = tokio::time::Instant::now() + LEASE + WAIT;
    let reaped = loop {
        let (ra, rb) = tokio::join!(a.fleet.sweep(), b.fleet.sweep());
        let reaped = ra.unwrap() + rb.unwrap();
        if reaped > 0 {
            break reaped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost lease was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reaped, 1, "the lost lease left the registry once");
    a.wait_count("exam:1", 1).await;
    a.wait_count("exam:2", 0).await;

    let leaves = |events: &[serde_json::Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["event"] == "presence_leave")
            .map(|e| e["payload"]["userId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(leaves(&history(&redis, &room("exam:1")).await), ["1"]);
    assert_eq!(leaves(&history(&redis, &room("exam:2")).await), ["1"]);
    let lost: Vec<String> = entries(&redis, stream)
        .await
        .into_iter()
        .filter(|e| e.get("reason").map(String::as_str) == Some("gateway_lost"))
        .map(|e| {
            assert!(e["gateway"].starts_with("dead-"), "{e:?}");
            assert_eq!(e["type"], "disconnect");
            e["socketId"].clone()
        })
        .collect();
    let mut sorted = lost.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["1", "2", "3"],
        "one gateway_lost per lost connection"
    );
    // A later sweep finds nothing more to do.
    assert_eq!(a.fleet.sweep().await.unwrap(), 0);
    assert_eq!(leaves(&history(&redis, &room("exam:1")).await).len(), 1);
    a.stop.cancel();
    b.stop.cancel();
}

/// A gateway whose lease lapsed while it was alive (cut off from Redis for longer than the
/// lease) is reaped like a dead one, then takes a new incarnation and asserts its members and
/// connections again.
#[tokio::test]
async fn a_gateway_whose_lease_lapsed_asserts_its_members_again() {
    let redis = RedisServer::start();
    let cut = Member::start(&redis, "cut", false).await;
    let other = Member::start(&redis, "other", true).await;
    let u = identity("5");
    cut.connect(7, &u, &["exam:3"]);
    other.wait_count("exam:3", 1).await;
    let first = cut.fleet.incarnation().id;
    // Its lease runs out while it is cut off (it renews nothing); the other gateway reaps it.
    let deadline = tokio::time::Instant::now() + LEASE + WAIT;
    loop {
        match other.fleet.sweep().await.unwrap() {
            0 => assert!(
                tokio::time::Instant::now() < deadline,
                "the cut gateway's lease was never reaped"
            ),
            reaped => {
                assert_eq!(reaped, 1, "one lease reaped");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.wait_count("exam:3", 0).await;
    // Back in touch: its renewal finds the lease lapsed; it takes a new incarnation and
    // asserts its member again.
    cut.fleet.renew().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events: Vec<String> = history(&redis, &room("exam:3"))
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        if events == ["presence_join", "presence_leave", "presence_join"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.wait_count("exam:3", 1).await;
    assert_ne!(cut.fleet.incarnation().id, first);
    // Its connection is recorded again, under the new incarnation.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stream = entries(&redis, "rtg:{1}:lifecycle").await;
        let reasserted = stream.iter().any(|e| {
            e["type"] == "connect"
                && e.get("reason").map(String::as_str) == Some("reasserted")
                && e["gateway"] == *cut.fleet.incarnation().id
        });
        if reasserted {
            assert_eq!(
                stream
                    .iter()
                    .filter(|e| e.get("reason").map(String::as_str) == Some("gateway_lost"))
                    .count(),
                1
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stream:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cut.stop.cancel();
    other.stop.cancel();
}

/// A real gateway with the lifecycle stream on: the entries of one client's life carry every
/// field, and a graceful exit leaves no presence, no lease and no `gateway_lost` behind.
#[tokio::test]
async fn lifecycle_entries_and_a_graceful_exit() {
    let redis = RedisServer::start();
    let mut gw = Gateway::start(&[
        ("REDIS_URL", &redis.url()),
        ("GATEWAY_LIFECYCLE", "on"),
        ("GATEWAY_NAME", "gw-1"),
    ]);
    gw.wait_readyz(200).await;
    let c = gw.client("10", "1", "STUDENT").await;
    let ack = c.request("join", &json!("exam:4"), WAIT).await.unwrap();
    assert_eq!(ack["ok"], true, "{ack}");
    let ack = c.request("leave", &json!("exam:4"), WAIT).await.unwrap();
    assert_eq!(ack["ok"], true, "{ack}");
    let ack = c.request("join", &json!("exam:4"), WAIT).await.unwrap();
    assert_eq!(ack["ok"], true, "{ack}");
    let ack = c
        .request("presence", &json!({ "room": "exam:4" }), WAIT)
        .await
        .unwrap();
    assert_eq!(
        ack,
        json!({ "ok": true, "room": "exam:4", "count": 1,
                "members": [{ "userId": "10", "role": "STUDENT", "connections": 1 }] })
    );
    assert!(gw.terminate().success());

    let stream = entries(&redis, "rtg:{1}:lifecycle").await;
    let kinds: Vec<(&str, Option<&str>, Option<&str>)> = stream
        .iter()
        .map(|e| {
            (
                e["type"].as_str(),
                e.get("room").map(String::as_str),
                e.get("reason").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("connect", None, None),
            ("authenticate", None, None),
            ("join", Some("exam:4"), None),
            ("leave", Some("exam:4"), None),
            ("join", Some("exam:4"), None),
            // The drain closes the transport (so the stock client reconnects elsewhere).
            ("disconnect", None, Some("transport_close")),
        ]
    );
    for e in &stream {
        assert_eq!(e["userId"], "10");
        assert_eq!(e["transport"], "websocket");
        assert!(e["gateway"].starts_with("gw-1-"), "{e:?}");
        assert!(e["socketId"].parse::<u64>().is_ok(), "{e:?}");
        assert!(
            e["timestamp"].parse::<i64>().unwrap() > 1_700_000_000_000,
            "{e:?}"
        );
    }
    assert_eq!(redis.cli(&["ZCARD", "rtg:gateways"]).trim(), "0");
    assert_eq!(redis.cli(&["EXISTS", "rtg:{1/exam:4}:pu"]).trim(), "0");
    assert_eq!(redis.cli(&["KEYS", "rtg:gw:*"]).trim(), "");
    assert_eq!(redis.cli(&["KEYS", "rtg:{1}:conns:*"]).trim(), "");
}
