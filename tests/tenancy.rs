//! Many tenants on one fleet, against real processes: API keys with tenants and scopes (and
//! their SIGHUP reload), per-tenant quotas held across 3 gateways on one `redis-server` and on
//! a Redis Cluster (connections, publish rate on every gateway, and through `FCALL` on one
//! server), and the control API's
//! revocations surviving a gateway restart. The stock-client side of disconnect and revoke is
//! in `tests/node/control.test.mjs`, driven by `node_interop`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::client::{Client, ClientError};
use common::redis_cluster::RedisCluster;
use common::redis_server::RedisServer;
use common::{batch_created, now, sign, token, Gateway, SECRET, WAIT};
use serde_json::{json, Value};

const T1_PUBLISH: &str = "tenant-one-publisher-0123456789";
const T1_CONTROL: &str = "tenant-one-control-0123456789";
const T2_PUBLISH: &str = "tenant-two-publisher-0123456789";
const ROTATED: &str = "tenant-one-rotated-key-0123456789";

fn keys_file(entries: &Value) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(entries.to_string().as_bytes()).unwrap();
    f
}

fn text_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn base_keys() -> Value {
    json!([
        { "key": T1_PUBLISH, "name": "t1-publisher", "tenants": [1], "scopes": ["publish"] },
        { "key": T1_CONTROL, "name": "t1-control", "tenants": [1], "scopes": ["control"] },
        { "key": T2_PUBLISH, "name": "t2-publisher", "tenants": ["2"], "scopes": ["publish", "presence"] },
    ])
}

async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", gw.url());
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url).header("content-type", "application/json"),
    };
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.bearer_auth(key).send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Every control endpoint, for `tenant` and `user`.
fn control_calls(tenant: i64, user: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        (
            "GET",
            format!("/v1/connections?institutionId={tenant}&userId={user}"),
            None,
        ),
        (
            "POST",
            "/v1/disconnect".into(),
            Some(json!({ "institutionId": tenant, "userId": user })),
        ),
        (
            "POST",
            "/v1/revoke".into(),
            Some(json!({ "institutionId": tenant, "userId": user })),
        ),
        (
            "POST",
            "/v1/rooms/leave".into(),
            Some(json!({ "institutionId": tenant, "userId": user, "room": "batch:1" })),
        ),
    ]
}

/// A key of tenant 1 cannot act in tenant 2 on any endpoint; a publish-only key cannot call
/// the control API; keys never reach the log; SIGHUP swaps keys without dropping a connection,
/// and a bad file keeps the keys in force.
#[tokio::test]
async fn keys_are_held_to_their_tenants_and_scopes_and_reload_on_sighup() {
    let file = keys_file(&base_keys());
    let path = file.path().to_str().unwrap().to_string();
    let gw = Gateway::start(&[("GATEWAY_API_KEYS_FILE", &path)]);
    gw.wait_readyz(200).await;

    // Publish: own tenant yes, other tenant no (nothing published), batch checked item by item.
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        T1_PUBLISH,
        Some(batch_created(1, &["batch:1"], 1)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        T1_PUBLISH,
        Some(batch_created(2, &["batch:1"], 1)),
    )
    .await;
    assert_eq!((s, code(&b)), (403, "tenant_not_allowed"), "{b}");
    let batch = json!([
        batch_created(1, &["batch:1"], 2),
        batch_created(2, &["batch:1"], 2)
    ]);
    let (s, b) = call(&gw, "POST", "/v1/publish/batch", T1_PUBLISH, Some(batch)).await;
    assert_eq!((s, code(&b)), (403, "tenant_not_allowed"), "{b}");
    assert_eq!(b["error"]["field"], "[1].institutionId");
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        T2_PUBLISH,
        Some(batch_created(2, &["batch:1"], 3)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // Tenant 2's room got exactly the one event its own key published (offset 1).
    assert_eq!(b["rooms"][0]["offset"], 1, "{b}");

    // Control: the publish-only key has no control scope; the control key has no tenant 2 and
    // no publish scope.
    for (method, path, body) in control_calls(1, "7") {
        let (s, b) = call(&gw, method, &path, T1_PUBLISH, body).await;
        assert_eq!((s, code(&b)), (403, "scope_not_allowed"), "{path}: {b}");
    }
    for (method, path, body) in control_calls(2, "7") {
        let (s, b) = call(&gw, method, &path, T1_CONTROL, body).await;
        assert_eq!((s, code(&b)), (403, "tenant_not_allowed"), "{path}: {b}");
    }
    for (method, path, body) in control_calls(1, "7") {
        let (s, b) = call(&gw, method, &path, T1_CONTROL, body).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        T1_CONTROL,
        Some(batch_created(1, &["batch:1"], 4)),
    )
    .await;
    assert_eq!((s, code(&b)), (403, "scope_not_allowed"), "{b}");
    // PUBLISH_API_KEYS keep working in every tenant.
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        common::KEY,
        Some(batch_created(2, &["batch:1"], 5)),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // A connected client, to prove reloads drop nothing.
    let mut client = gw.client("10", "1", "STAFF").await;

    // Rotate: the old tenant-1 key goes, a new one comes.
    let rotated = json!([
        { "key": ROTATED, "name": "t1-rotated", "tenants": [1], "scopes": ["publish"] },
        { "key": T1_CONTROL, "name": "t1-control", "tenants": [1], "scopes": ["control"] },
    ]);
    std::fs::write(&path, rotated.to_string()).unwrap();
    sighup(&gw);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, _) = call(
            &gw,
            "POST",
            "/v1/publish",
            ROTATED,
            Some(batch_created(1, &["institution:1"], 6)),
        )
        .await;
        if s == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated key never worked:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        T1_PUBLISH,
        Some(batch_created(1, &["batch:1"], 7)),
    )
    .await;
    assert_eq!((s, code(&b)), (403, "invalid_api_key"), "{b}");
    let event = client
        .wait_for("batch_update", WAIT)
        .await
        .expect("the connection survived the reload");
    assert_eq!(event["payload"]["batchId"], 6);

    // A broken file: the keys in force stay, the log says why.
    std::fs::write(&path, "[{\"key\": \"x\"").unwrap();
    sighup(&gw);
    wait_log(&gw, "reload failed").await;
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/publish",
        ROTATED,
        Some(batch_created(1, &["institution:1"], 8)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let event = client
        .wait_for("batch_update", WAIT)
        .await
        .expect("still connected");
    assert_eq!(event["payload"]["batchId"], 8);

    let log = gw.log();
    assert!(
        log.contains("key=\"t1-publisher\" tenant=\"-\" user=\"-\" result=\"scope_not_allowed\""),
        "a refused scope is audited by key name:\n{log}"
    );
    for key in [T1_PUBLISH, T1_CONTROL, T2_PUBLISH, ROTATED, common::KEY] {
        assert!(!log.contains(key), "a key reached the log");
    }
    assert!(
        log.contains("key=\"t1-control\" tenant=\"2\""),
        "control calls are audited by key name:\n{log}"
    );
    let metrics = gw.metrics().await;
    assert!(!metrics.contains(T1_PUBLISH) && !metrics.contains(ROTATED));
    assert!(
        common::metric(
            &metrics,
            "gateway_control_requests_total",
            "result=\"tenant_not_allowed\""
        ) >= 4.0
    );
    assert!(
        common::metric(
            &metrics,
            "gateway_control_requests_total",
            "result=\"scope_not_allowed\""
        ) >= 4.0
    );
    client.close().await;
}

fn sighup(gw: &Gateway) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_log(gw: &Gateway, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw.log().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Redis a fleet shares: one server, or a Redis Cluster (3 primaries, 3 replicas).
enum Fleet {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Fleet {
    fn start(cluster: bool) -> Self {
        if cluster {
            Fleet::Cluster(RedisCluster::start())
        } else {
            Fleet::One(RedisServer::start())
        }
    }

    /// The gateway's setting for this Redis.
    fn env(&self) -> (&'static str, String) {
        match self {
            Fleet::One(r) => ("REDIS_URL", r.url()),
            Fleet::Cluster(c) => ("REDIS_CLUSTER_NODES", c.seeds()),
        }
    }
}

async fn fleet_gateways(
    bus: (&'static str, String),
    n: usize,
    extra: &[(&str, &str)],
) -> Vec<Gateway> {
    let mut env = vec![(bus.0, bus.1.as_str())];
    env.extend_from_slice(extra);
    let gws: Vec<Gateway> = (0..n).map(|_| Gateway::start(&env)).collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }
    gws
}

async fn try_connect(gw: &Gateway, sub: &str, tenant: &str) -> Result<Client, ClientError> {
    let mut c = Client::connect(
        &gw.url(),
        Some(json!({ "token": token(sub, tenant, "STAFF", 3600) })),
    )
    .await?;
    c.wait_for("authenticated", WAIT)
        .await
        .ok_or(ClientError::Timeout)?;
    Ok(c)
}

const CONNECTION_CAP: usize = 4;

#[tokio::test]
async fn the_connection_cap_holds_across_three_gateways() {
    connection_cap_holds(false).await;
}

#[tokio::test]
async fn the_connection_cap_holds_across_three_gateways_on_a_redis_cluster() {
    connection_cap_holds(true).await;
}

/// Tenant 1 may hold 4 connections across the fleet: 12 concurrent attempts spread over 3
/// gateways get exactly 4 in (the count is taken atomically in Redis, in the tenant's one key
/// and so in one slot of a cluster), the rest are refused with `tenant_connection_limit`,
/// tenant 2 is unaffected, and a closed connection gives its slot back.
async fn connection_cap_holds(cluster: bool) {
    let redis = Fleet::start(cluster);
    let tenants = text_file(&format!(
        "{{\"tenants\": {{\"1\": {{\"maxConnections\": {CONNECTION_CAP}}}}}, \"metricsTenants\": [1]}}"
    ));
    let gws = fleet_gateways(
        redis.env(),
        3,
        &[("GATEWAY_TENANTS_FILE", tenants.path().to_str().unwrap())],
    )
    .await;
    let attempts = (0..12).map(|i| try_connect(&gws[i % 3], "20", "1"));
    let results = futures_util::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    for r in results {
        match r {
            Ok(c) => admitted.push(c),
            Err(ClientError::Refused(code)) => assert_eq!(code, "tenant_connection_limit"),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(
        admitted.len(),
        CONNECTION_CAP,
        "the fleet admitted {} connections",
        admitted.len()
    );
    for gw in &gws {
        let refused = try_connect(gw, "21", "1").await;
        assert!(
            matches!(refused, Err(ClientError::Refused(ref c)) if c == "tenant_connection_limit")
        );
    }
    // Another tenant connects on every gateway.
    let mut others = Vec::new();
    for gw in &gws {
        others.push(
            try_connect(gw, "30", "2")
                .await
                .expect("tenant 2 is not limited"),
        );
    }
    // One leaves: its slot opens (a Redis round trip after the close) on any gateway.
    admitted.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let again = loop {
        match try_connect(&gws[2], "22", "1").await {
            Ok(c) => break c,
            Err(ClientError::Refused(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the freed slot was never given back: {e}"),
        }
    };
    let refused = try_connect(&gws[0], "23", "1").await;
    assert!(
        matches!(refused, Err(ClientError::Refused(_))),
        "the cap holds again"
    );
    let m = gws[0].metrics().await;
    assert!(
        common::metric(&m, "gateway_tenant_quota_total", "outcome=\"refused\"") >= 1.0,
        "{m}"
    );
    assert!(
        m.contains("tenant=\"1\""),
        "tenant 1 is listed for its own label:\n{m}"
    );
    drop((again, others));
}

const RATE: u64 = 5;

fn fcall(redis: &RedisServer, tenant: i64, id: &str) -> String {
    let room = format!("{tenant}/batch:9");
    let envelope = json!({
        "id": id, "channel": "batch_update", "event": "batch_created", "institutionId": tenant,
        "timestamp": now() * 1000, "payload": batch_created(tenant, &["batch:9"], 9)["payload"],
    });
    redis.cli(&[
        "FCALL",
        "rtg_publish",
        "2",
        &format!("rtg:{{{room}}}:h"),
        &format!("rtg:{{{room}}}:m"),
        &format!("rtg:{{{room}}}"),
        &envelope.to_string(),
        "1000",
        "3600",
    ])
}

#[tokio::test]
async fn the_publish_rate_holds_on_every_gateway_and_through_fcall() {
    let redis = RedisServer::start();
    publish_rate_holds(("REDIS_URL", redis.url())).await;
    // Drain the bucket through the gateways, then a direct FCALL is refused as well.
    let mut refused_fcall = false;
    for i in 0..(RATE * 2) {
        let out = fcall(&redis, 1, &format!("direct-{i}"));
        if out.contains("tenant_rate_limited") {
            refused_fcall = true;
            break;
        }
    }
    assert!(refused_fcall, "a direct FCALL caller was never limited");
    let out = fcall(&redis, 2, "direct-other");
    assert!(!out.contains("ERR"), "tenant 2 through FCALL: {out}");
}

/// On a Redis Cluster the gateways take the rate from the tenant's bucket (`rtg_rate_take`, one
/// key) before `rtg_publish`, whose keys are in the room's slot.
#[tokio::test]
async fn the_publish_rate_holds_on_every_gateway_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    publish_rate_holds(("REDIS_CLUSTER_NODES", cluster.seeds())).await;
}

/// Tenant 1 may publish 5 events per second across the fleet: a burst on all 3 gateways gets
/// 429 `tenant_rate_limited` with `Retry-After` on each, the accepted total stays within the
/// rate, and tenant 2 publishes freely.
async fn publish_rate_holds(bus: (&'static str, String)) {
    let tenants = text_file(&format!(
        "defaults:\n  publishRate: 1000\ntenants:\n  \"1\":\n    publishRate: {RATE}\n"
    ));
    let gws = fleet_gateways(
        bus,
        3,
        &[("GATEWAY_TENANTS_FILE", tenants.path().to_str().unwrap())],
    )
    .await;
    // One burst: 30 publishes of tenant 1 and 30 of tenant 2 on each gateway, all at once.
    let started = std::time::Instant::now();
    let send = |g: usize, tenant: i64, i: i64| {
        let url = format!("{}/v1/publish", gws[g].url());
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(common::KEY)
                .header("content-type", "application/json")
                .body(batch_created(tenant, &["batch:1"], i).to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: Value = resp.json().await.unwrap();
            (g, tenant, status, retry, body)
        }
    };
    let burst = (0..90).flat_map(|i| [send(i % 3, 1, i as i64), send(i % 3, 2, i as i64)]);
    let results = futures_util::future::join_all(burst).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut accepted = 0u64;
    let mut limited = [0u32; 3];
    for (g, tenant, status, retry, body) in results {
        match (tenant, status) {
            (2, 200) => {}
            (2, _) => panic!("tenant 2 must not be limited: {status} {body}"),
            (_, 200) => accepted += 1,
            (_, 429) => {
                assert_eq!(code(&body), "tenant_rate_limited", "{body}");
                let retry = retry.expect("Retry-After");
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                limited[g] += 1;
            }
            _ => panic!("status {status}: {body}"),
        }
    }
    // A bucket of one second's worth, refilled at the rate while the burst lasted.
    let bound = RATE as f64 * (1.0 + elapsed) + 1.0;
    assert!(
        accepted >= RATE && accepted as f64 <= bound,
        "{accepted} accepted in {elapsed:.2}s; the rate allows {bound}"
    );
    assert!(
        limited.iter().all(|n| *n > 0),
        "every gateway refused some: {limited:?}"
    );
    let m = gws[0].metrics().await;
    assert!(
        common::metric(
            &m,
            "gateway_tenant_quota_total",
            "quota=\"publish_rate\",outcome=\"refused\""
        ) >= 1.0,
        "{m}"
    );
}

/// A revocation is stored in Redis: a gateway that starts after it still refuses the old
/// token (with `token_revoked`) and accepts a newer one.
#[tokio::test]
async fn a_revocation_survives_a_gateway_restart() {
    revocation_survives_a_restart(false).await;
}

#[tokio::test]
async fn a_revocation_survives_a_gateway_restart_on_a_redis_cluster() {
    revocation_survives_a_restart(true).await;
}

async fn revocation_survives_a_restart(cluster: bool) {
    let redis = Fleet::start(cluster);
    let keys = keys_file(&base_keys());
    let keys_path = keys.path().to_str().unwrap().to_string();
    let gws = fleet_gateways(redis.env(), 2, &[("GATEWAY_API_KEYS_FILE", &keys_path)]).await;
    let old = sign(
        &json!({ "sub": "42", "institutionId": "1", "role": "STAFF", "iat": now() - 60, "exp": now() + 3600 }),
        SECRET,
    );
    let mut live = Client::connect(&gws[1].url(), Some(json!({ "token": old })))
        .await
        .unwrap();
    live.wait_for("authenticated", WAIT).await.unwrap();
    let (s, b) = call(
        &gws[0],
        "POST",
        "/v1/revoke",
        T1_CONTROL,
        Some(json!({ "institutionId": 1, "userId": 42 })),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["disconnected"], 1, "{b}");
    let err = live.wait_for("auth_error", WAIT).await.expect("auth_error");
    assert_eq!(err["code"], "session_revoked");
    assert!(live
        .wait_for(common::client::DISCONNECTED, WAIT)
        .await
        .is_some());

    let mut gws = gws;
    gws.remove(1).kill();
    let restarted = fleet_gateways(redis.env(), 1, &[("GATEWAY_API_KEYS_FILE", &keys_path)]).await;
    for gw in gws.iter().chain(&restarted) {
        match Client::connect(&gw.url(), Some(json!({ "token": old }))).await {
            Err(ClientError::Refused(c)) => assert_eq!(c, "token_revoked"),
            other => panic!("the revoked token was let in: {:?}", other.map(|c| c.sid)),
        }
        // No iat: nothing shows it is newer than the revocation.
        let no_iat = sign(
            &json!({ "sub": "42", "institutionId": "1", "role": "STAFF", "exp": now() + 60 }),
            SECRET,
        );
        assert!(matches!(
            Client::connect(&gw.url(), Some(json!({ "token": no_iat }))).await,
            Err(ClientError::Refused(c)) if c == "token_revoked"
        ));
        let fresh = sign(
            &json!({ "sub": "42", "institutionId": "1", "role": "STAFF", "iat": now() + 1, "exp": now() + 3600 }),
            SECRET,
        );
        let mut c = Client::connect(&gw.url(), Some(json!({ "token": fresh })))
            .await
            .expect("a new token is accepted");
        assert!(c.wait_for("authenticated", WAIT).await.is_some());
    }
}
