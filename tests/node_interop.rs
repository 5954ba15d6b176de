//! Node interop tier: the official `socket.io-client` (pinned in `tests/node/package.json`)
//! against the real gateway binary, over both transports.
//!
//! Each test starts its own gateway with the harness (the recovery tests: two, on the embedded
//! bus or on a private Redis server), makes sure `tests/node/node_modules` is installed (one
//! `npm ci` at a time, across test threads and test processes), then runs one `node --test` file
//! against it with a deadline. A failure prints node's output and the gateways' logs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

/// Longest a node test file may run before it is killed.
const NODE_DEADLINE: Duration = Duration::from_secs(120);
/// Grace period of the gateways that test the seed's timeout and token expiry.
const SHORT_GRACE_MS: u64 = 1000;
/// Room limit of the gateway that tests the room policy.
const MAX_ROOMS: usize = 3;
/// History kept per room by the recovery tests' main gateway.
const HISTORY_MAX_LEN: u64 = 2000;
/// Most events one recovery may replay on the recovery tests' gateways.
const MAX_REPLAY: u64 = 1000;
/// History kept per room by the recovery tests' second gateway (for `too_old`).
const SMALL_HISTORY_MAX_LEN: u64 = 20;
/// How long a Redis gateway stays subscribed to a room after its last member left; shorter
/// than the recovery scenario's offline time, so the reconnect subscribes again.
const UNSUBSCRIBE_DELAY: &str = "500ms";

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// Makes sure `tests/node/node_modules` is installed (see `common::node::ensure_installed`).
async fn ensure_node_modules() {
    tokio::task::spawn_blocking(common::node::ensure_installed)
        .await
        .expect("node modules install");
}

/// Starts a gateway with `env` and waits until it is ready.
async fn start_gateway(env: &[(&str, &str)]) -> common::Gateway {
    // Plain logs whatever the terminal: the harness reads the listening addresses from them.
    let mut all = vec![("NO_COLOR", "1")];
    all.extend_from_slice(env);
    let gw = common::Gateway::start(&all);
    gw.wait_readyz(200).await;
    gw
}

/// Starts a gateway with `gateway_env`, runs `node --test <file>` against it with `node_env`,
/// and fails with node's output and the gateway's log unless node exits 0.
async fn node_test(file: &str, gateway_env: &[(&str, &str)], node_env: &[(&str, String)]) {
    ensure_node_modules().await;
    let gw = start_gateway(gateway_env).await;
    run_node(file, &gw, &[], node_env).await;
}

/// Runs `node --test <file>` against `gw` (GATEWAY_URL, and ADMIN_URL for `/metrics`) with
/// `node_env`; fails with node's
/// output and the logs of `gw` and of the `others` (gateways the file also uses) unless node
/// exits 0.
async fn run_node(
    file: &str,
    gw: &common::Gateway,
    others: &[(&str, &common::Gateway)],
    node_env: &[(&str, String)],
) {
    let dir = node_dir();
    assert!(dir.join(file).is_file(), "no node test file {file}");
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=spec", file])
        .current_dir(&dir)
        .env("GATEWAY_URL", gw.url())
        .env("ADMIN_URL", format!("http://{}", gw.admin))
        .env("JWT_SECRET", common::SECRET)
        .env("PUBLISH_KEY", common::KEY)
        .env("NO_COLOR", "1")
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_TEST_CONTEXT");
    for (k, v) in node_env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = common::node::run_with_deadline(cmd, NODE_DEADLINE).await;
    let verdict = match out.status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("node --test {file} failed ({s})")),
        None => Some(format!(
            "node --test {file} did not finish within {NODE_DEADLINE:?} and was killed"
        )),
    };
    if let Some(verdict) = verdict {
        let mut logs = format!("--- gateway log ---\n{}", gw.log());
        for (name, other) in others {
            logs.push_str(&format!("--- {name} gateway log ---\n{}", other.log()));
        }
        panic!(
            "{verdict} after {:?}\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n{logs}",
            started.elapsed(),
            out.stdout,
            out.stderr,
        );
    }
    println!(
        "node --test {file}: ok in {:?}\n{}",
        started.elapsed(),
        out.stdout
    );
}

/// Every handshake refusal code, forged claims, client-sent identity fields, ping/pong.
#[tokio::test]
async fn node_handshake() {
    node_test("handshake.test.mjs", &[], &[]).await;
}

/// The seed's connect-then-`authenticate` flow (default grace period).
#[tokio::test]
async fn node_seed_flow() {
    node_test("seed.test.mjs", &[], &[]).await;
}

/// Grace-period timeout, token expiry and refresh, with a 1 s grace and 2 s tokens.
#[tokio::test]
async fn node_session_lifetime() {
    let grace = format!("{SHORT_GRACE_MS}ms");
    node_test(
        "lifetime.test.mjs",
        &[("GATEWAY_AUTH_GRACE", &grace)],
        &[("AUTH_GRACE_MS", SHORT_GRACE_MS.to_string())],
    )
    .await;
}

/// join / leave under a room policy with a role restriction and a small room limit.
#[tokio::test]
async fn node_room_policy() {
    let max = MAX_ROOMS.to_string();
    node_test(
        "rooms.test.mjs",
        &[
            ("GATEWAY_ROOM_ROLES", "incident=ADMIN"),
            ("GATEWAY_MAX_ROOMS_PER_SOCKET", &max),
        ],
        &[("MAX_ROOMS", max.clone())],
    )
    .await;
}

/// Automatic rooms, tenant isolation, every catalog channel, offsets and payload fidelity.
#[tokio::test]
async fn node_delivery() {
    node_test("delivery.test.mjs", &[], &[]).await;
}

/// Runs recovery.test.mjs against a main gateway (HISTORY_MAX_LEN, MAX_REPLAY) and a second one
/// that keeps SMALL_HISTORY_MAX_LEN events per room, both on the bus `redis` says: the embedded
/// one, or the given Redis server (the two gateways then use different key prefixes).
async fn recovery(redis: Option<&common::redis_server::RedisServer>) {
    ensure_node_modules().await;
    let history = HISTORY_MAX_LEN.to_string();
    let small_history = SMALL_HISTORY_MAX_LEN.to_string();
    let replay = MAX_REPLAY.to_string();
    let url = redis.map(|r| r.url());
    let mut env = vec![("GATEWAY_MAX_REPLAY", replay.as_str())];
    if let Some(url) = &url {
        env.extend([
            ("REDIS_URL", url.as_str()),
            ("GATEWAY_UNSUBSCRIBE_DELAY", UNSUBSCRIBE_DELAY),
        ]);
    }
    let mut main_env = env.clone();
    main_env.push(("GATEWAY_HISTORY_MAX_LEN", &history));
    let mut small_env = env;
    small_env.extend([
        ("GATEWAY_HISTORY_MAX_LEN", small_history.as_str()),
        ("GATEWAY_REDIS_PREFIX", "rtg-small"),
    ]);
    let gw = start_gateway(&main_env).await;
    let small = start_gateway(&small_env).await;
    run_node(
        "recovery.test.mjs",
        &gw,
        &[("small-history", &small)],
        &[
            ("SMALL_GATEWAY_URL", small.url()),
            ("HISTORY_MAX_LEN", history.clone()),
            ("SMALL_HISTORY_MAX_LEN", small_history.clone()),
            ("MAX_REPLAY", replay.clone()),
            (
                "BUS",
                if redis.is_some() { "redis" } else { "memory" }.to_string(),
            ),
        ],
    )
    .await;
}

/// Recovery on the embedded bus: the offline client of issue scenario 1 and every position the
/// gateway cannot serve.
#[tokio::test]
async fn node_recovery_embedded_bus() {
    recovery(None).await;
}

/// The same recovery scenarios with the gateways on a private Redis server.
#[tokio::test]
async fn node_recovery_redis_bus() {
    let redis = common::redis_server::RedisServer::start();
    recovery(Some(&redis)).await;
}

/// A stalled stock client is cut as a slow consumer, counted, and recovers every event from
/// history after reconnecting by itself.
#[tokio::test]
async fn node_slow_consumer_recovers() {
    const SOCKET_BUFFER: &str = "64";
    node_test(
        "overload.test.mjs",
        &[
            ("GATEWAY_SOCKET_BUFFER", SOCKET_BUFFER),
            ("GATEWAY_MAX_REPLAY", "1000"),
            ("GATEWAY_HISTORY_MAX_LEN", "2000"),
        ],
        &[("SOCKET_BUFFER", SOCKET_BUFFER.to_string())],
    )
    .await;
}

/// permessage-deflate with Node's `ws` (with and without the extension) and the stock client in
/// one room: compressed frames where negotiated, plain ones elsewhere, every event intact.
#[tokio::test]
async fn node_compression() {
    const MIN_BYTES: &str = "256";
    node_test(
        "compression.test.mjs",
        &[("GATEWAY_WS_COMPRESSION_MIN_BYTES", MIN_BYTES)],
        &[("COMPRESSION_MIN_BYTES", MIN_BYTES.to_string())],
    )
    .await;
}

/// The MessagePack parser beside JSON over both transports: same events, order and offsets,
/// live and after a reconnect with recovery; requests and acks.
#[tokio::test]
async fn node_msgpack() {
    node_test("msgpack.test.mjs", &[], &[]).await;
}

/// Most members a presence answer lists on the presence tests' gateways (small, so the
/// truncation test stays small).
const PRESENCE_MAX_MEMBERS: &str = "3";

/// presence.test.mjs against one gateway on the bus `redis` says.
async fn presence_one_gateway(redis: Option<&common::redis_server::RedisServer>) {
    let url = redis.map(|r| r.url());
    let mut env = vec![
        ("GATEWAY_PRESENCE_KINDS", "exam,batch,incident,institution"),
        ("GATEWAY_PRESENCE_EVENTS", "exam"),
        ("GATEWAY_PRESENCE_MAX_MEMBERS", PRESENCE_MAX_MEMBERS),
    ];
    if let Some(url) = &url {
        env.extend([("REDIS_URL", url.as_str()), ("GATEWAY_LIFECYCLE", "on")]);
    }
    node_test(
        "presence.test.mjs",
        &env,
        &[("MAX_MEMBERS", PRESENCE_MAX_MEMBERS.to_string())],
    )
    .await;
}

/// Presence on the embedded bus: per-user members, truncation, counts-only institution rooms,
/// events that recover, bad input, tenant isolation (socket and HTTP).
#[tokio::test]
async fn node_presence_embedded_bus() {
    presence_one_gateway(None).await;
}

/// The same presence scenarios on a private Redis server.
#[tokio::test]
async fn node_presence_redis_bus() {
    let redis = common::redis_server::RedisServer::start();
    presence_one_gateway(Some(&redis)).await;
}

/// Lease of the fleet test's gateways: short, so a lost gateway is noticed in seconds, yet
/// long enough that a loaded machine never makes a live gateway miss its renewals.
const FLEET_LEASE_MS: u64 = 3000;

/// Three gateways on one Redis with the stock client: the same exact presence everywhere,
/// joins and leaves within 1 s and once per user; then the third gateway is SIGKILLed: its
/// members leave within the lease plus a tick with one presence_leave each, and the lifecycle
/// stream has exactly one `gateway_lost` disconnect per connection it held.
#[tokio::test]
async fn node_presence_three_gateways_and_a_sigkill() {
    ensure_node_modules().await;
    let redis = common::redis_server::RedisServer::start();
    let url = redis.url();
    let lease = format!("{FLEET_LEASE_MS}ms");
    let env = |name: &'static str| {
        vec![
            ("REDIS_URL", url.clone()),
            ("GATEWAY_PRESENCE_EVENTS", "exam".to_string()),
            ("GATEWAY_PRESENCE_LEASE", lease.clone()),
            ("GATEWAY_LIFECYCLE", "on".to_string()),
            ("GATEWAY_NAME", name.to_string()),
        ]
    };
    let (ea, eb, ec) = (env("gw-a"), env("gw-b"), env("gw-c"));
    let a = start_gateway(&as_refs(&ea)).await;
    let b = start_gateway(&as_refs(&eb)).await;
    let c = start_gateway(&as_refs(&ec)).await;
    let result = tempfile::NamedTempFile::new().expect("temp file");
    let urls = [a.url(), b.url(), c.url()].join(",");
    run_node(
        "presence-fleet.test.mjs",
        &a,
        &[("b", &b), ("c (killed)", &c)],
        &[
            ("GATEWAY_URLS", urls),
            ("VICTIM_PID", c.pid().to_string()),
            ("LEASE_MS", FLEET_LEASE_MS.to_string()),
            ("RESULT_FILE", result.path().display().to_string()),
        ],
    )
    .await;
    let lost: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(result.path()).expect("result file"))
            .expect("result JSON");
    let lost = lost["lost"].as_u64().expect("lost count");
    assert!(lost > 0, "the killed gateway held no connection");

    // The lifecycle stream of tenant 1: one gateway_lost disconnect per connection the killed
    // gateway held, none duplicated, none for the survivors.
    let entries = lifecycle_entries(&redis, "1").await;
    let of = |e: &std::collections::HashMap<String, String>, k: &str| {
        e.get(k).cloned().unwrap_or_default()
    };
    let mut opened = std::collections::HashSet::new();
    let mut closed = std::collections::HashSet::new();
    let mut gone = Vec::new();
    for e in &entries {
        let id = (of(e, "gateway"), of(e, "socketId"));
        match (of(e, "type").as_str(), of(e, "reason").as_str()) {
            ("connect", _) => {
                opened.insert(id);
            }
            ("disconnect", "gateway_lost") => gone.push(id),
            ("disconnect", _) => {
                closed.insert(id);
            }
            _ => {}
        }
    }
    assert_eq!(gone.len() as u64, lost, "gateway_lost entries: {gone:?}");
    let unique: std::collections::HashSet<_> = gone.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        gone.len(),
        "a gateway_lost entry was duplicated: {gone:?}"
    );
    for id in &gone {
        assert!(
            id.0.starts_with("gw-c-"),
            "gateway_lost for a survivor: {id:?}"
        );
        assert!(
            opened.contains(id) && !closed.contains(id),
            "gateway_lost for {id:?}"
        );
    }
    let still_open: Vec<_> = opened
        .iter()
        .filter(|id| id.0.starts_with("gw-c-") && !closed.contains(*id) && !unique.contains(*id))
        .collect();
    assert!(
        still_open.is_empty(),
        "connections of the killed gateway never closed: {still_open:?}"
    );
    // Exactly one survivor removed the lost lease from the registry.
    let expiries = common::metric(
        &a.metrics().await,
        "gateway_presence_lease_expiries_total",
        "",
    ) + common::metric(
        &b.metrics().await,
        "gateway_presence_lease_expiries_total",
        "",
    );
    assert_eq!(expiries, 1.0);
}

/// `(name, value)` pairs borrowed from owned ones.
fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Every entry of `tenant`'s lifecycle stream, oldest first, as field maps.
async fn lifecycle_entries(
    redis: &common::redis_server::RedisServer,
    tenant: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("rtg:{{{tenant}}}:lifecycle"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
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

/// A gateway with its own catalog (tests/catalogs/exams.json): the new channel's event reaches
/// the stock client on the room its `defaultRoom` template names; built-in channels are unknown;
/// `GET /v1/catalog` serves the file with an ETag.
#[tokio::test]
async fn node_custom_catalog() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/catalogs/exams.json");
    let file = file.to_str().expect("UTF-8 path");
    node_test("catalog.test.mjs", &[("GATEWAY_CATALOG", file)], &[]).await;
}

/// The control API with the stock client: three gateways on one Redis; a user with sockets on
/// all of them (WebSocket and polling) is listed, made to leave a room, disconnected and
/// revoked within 1 s, stays offline, and a revoked token is refused everywhere.
#[tokio::test]
async fn node_control_across_three_gateways() {
    const CONTROL_KEY: &str = "tenant-one-control-key-0123456789";
    ensure_node_modules().await;
    let redis = common::redis_server::RedisServer::start();
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        keys.path(),
        format!(
            r#"[{{"key":"{CONTROL_KEY}","name":"exam-office","tenants":[1],"scopes":["control"]}}]"#
        ),
    )
    .unwrap();
    let url = redis.url();
    let path = keys.path().to_str().unwrap().to_string();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("GATEWAY_API_KEYS_FILE", path.as_str()),
    ];
    let (a, b, c) = (
        start_gateway(&env).await,
        start_gateway(&env).await,
        start_gateway(&env).await,
    );
    run_node(
        "control.test.mjs",
        &a,
        &[("second", &b), ("third", &c)],
        &[
            ("GATEWAY2_URL", b.url()),
            ("GATEWAY3_URL", c.url()),
            ("CONTROL_KEY", CONTROL_KEY.to_string()),
        ],
    )
    .await;
}

/// The stock client with its default options receives a stream published through its upgrade
/// once each and in order, and every client configuration gets the same answer to an unknown
/// event.
#[tokio::test]
async fn node_transports() {
    node_test("transports.test.mjs", &[], &[]).await;
}
