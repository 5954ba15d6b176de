//! The gateway core against a real gateway process: publish API errors, delivery and
//! isolation through the Rust client, the CLI, configuration errors, health and metrics.

mod common;

use std::process::Command;

use common::client::Client;
use common::{batch_created, metric, token, Gateway, KEY, QUIET, SECRET, WAIT};
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_readiness() {
    let gw = Gateway::start(&[]);
    assert_eq!(gw.get("/healthz").await.0, 200);
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\""), "{body}");
}

#[tokio::test]
async fn publish_errors_have_status_code_and_field() {
    let gw = Gateway::start(&[]);
    let good = batch_created(1, &["batch:1"], 1);

    let (s, b) = gw
        .post("/v1/publish", None, "application/json", good.to_string())
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("missing_api_key")),
        "{b}"
    );
    let (s, b) = gw
        .post(
            "/v1/publish",
            Some("wrong-key-0123456789"),
            "application/json",
            good.to_string(),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("invalid_api_key")),
        "{b}"
    );
    let (s, b) = gw
        .post("/v1/publish", Some(KEY), "text/plain", good.to_string())
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{b}"
    );
    let (s, b) = gw
        .post(
            "/v1/publish",
            Some(KEY),
            "application/json",
            "{not json".into(),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{b}"
    );

    let mut missing = good.clone();
    missing["payload"]
        .as_object_mut()
        .unwrap()
        .remove("examName");
    let (s, b) = gw.publish(&missing).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["field"], "payload.examName", "{b}");

    let mut wrong_type = good.clone();
    wrong_type["payload"]["totalSlots"] = json!("thirty");
    let (s, b) = gw.publish(&wrong_type).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (400, Some("payload.totalSlots")),
        "{b}"
    );

    let mut unknown = good.clone();
    unknown["event"] = json!("batch_exploded");
    let (s, b) = gw.publish(&unknown).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("unknown_event")),
        "{b}"
    );

    let mut other_tenant = good.clone();
    other_tenant["payload"]["institutionId"] = json!(2);
    let (s, b) = gw.publish(&other_tenant).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("tenant_mismatch")),
        "{b}"
    );

    let mut big = good.clone();
    big["payload"]["notes"] = json!("x".repeat(70_000));
    let (s, b) = gw.publish(&big).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );

    let huge = "y".repeat(200_000);
    let (s, b) = gw
        .post(
            "/v1/publish",
            Some(KEY),
            "application/json",
            format!("{{\"x\":\"{huge}\"}}"),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{b}"
    );

    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_publish_requests_total",
            "result=\"missing_api_key\""
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "gateway_publish_requests_total",
            "result=\"invalid_payload\""
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn batch_is_validated_before_anything_is_published() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client("10", "1", "ADMIN").await;
    let ack = c.request("join", &json!("batch:7"), WAIT).await.unwrap();
    assert_eq!(ack["ok"], true, "{ack}");

    let mut bad = batch_created(1, &["batch:7"], 2);
    bad["payload"].as_object_mut().unwrap().remove("batchId");
    let body = json!([batch_created(1, &["batch:7"], 1), bad]);
    let (s, b) = gw
        .post(
            "/v1/publish/batch",
            Some(KEY),
            "application/json",
            body.to_string(),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["field"], "[1].payload.batchId", "{b}");
    assert!(
        c.wait_for("batch_update", QUIET).await.is_none(),
        "half a rejected batch was published"
    );

    let body = json!([
        batch_created(1, &["batch:7"], 1),
        batch_created(1, &["batch:7"], 2)
    ]);
    let (s, b) = gw
        .post(
            "/v1/publish/batch",
            Some(KEY),
            "application/json",
            body.to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let offsets: Vec<u64> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rooms"][0]["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2]);
    for want in [1, 2] {
        let e = c.wait_for("batch_update", WAIT).await.expect("event");
        assert_eq!(e["offset"], want);
        assert_eq!(e["payload"]["batchId"], want);
    }

    let too_many: Vec<Value> = (0..101)
        .map(|i| batch_created(1, &["batch:7"], i))
        .collect();
    let (s, b) = gw
        .post(
            "/v1/publish/batch",
            Some(KEY),
            "application/json",
            json!(too_many).to_string(),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("batch_too_large")),
        "{b}"
    );
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let gw = Gateway::start(&[]);
    let mut t1 = gw.client("10", "1", "ADMIN").await;
    let mut t2 = gw.client("10", "2", "ADMIN").await;
    for c in [&t1, &t2] {
        let ack = c
            .request("join", &json!({ "room": "batch:456" }), WAIT)
            .await
            .unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let (s, b) = gw.publish(&batch_created(1, &["batch:456"], 456)).await;
    assert_eq!(s, 200, "{b}");
    let e = t1
        .wait_for("batch_update", WAIT)
        .await
        .expect("tenant 1 gets its event");
    assert_eq!(e["room"], "batch:456");
    assert_eq!(e["offset"], 1);
    assert!(
        t2.wait_for("batch_update", QUIET).await.is_none(),
        "tenant 2 got tenant 1's event"
    );

    // Same user id in both tenants: user rooms are tenant-scoped too.
    let notif = json!({
        "channel": "notification", "event": "new_notification", "institutionId": 2,
        "payload": { "notificationId": 5, "userId": 10, "title": "Hi", "message": "m", "kind": "info",
                     "createdAt": "2026-11-28T10:00:00Z", "institutionId": 2 }
    });
    let (s, b) = gw.publish(&notif).await;
    assert_eq!(
        (s, b["rooms"][0]["room"].as_str()),
        (200, Some("user:10")),
        "{b}"
    );
    assert!(t2.wait_for("notification", WAIT).await.is_some());
    assert!(
        t1.wait_for("notification", QUIET).await.is_none(),
        "tenant 1 got tenant 2's notification"
    );
}

#[tokio::test]
async fn offsets_are_contiguous_and_ordered_under_concurrent_publishers() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client("10", "1", "ADMIN").await;
    c.request("join", &json!("exam:1"), WAIT).await.unwrap();
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let url = gw.url();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0..100 {
                    let r = http
                        .post(format!("{url}/v1/publish"))
                        .bearer_auth(KEY)
                        .json(&batch_created(1, &["exam:1"], p * 1000 + i))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for want in 1..=200u64 {
        let e = c
            .wait_for("batch_update", WAIT)
            .await
            .unwrap_or_else(|| panic!("event {want} missing"));
        assert_eq!(e["offset"], want);
    }
    assert!(
        c.wait_for("batch_update", QUIET).await.is_none(),
        "duplicate delivery"
    );
}

#[tokio::test]
async fn bad_client_input_gets_errors_and_the_gateway_stays_up() {
    let gw = Gateway::start(&[]);
    let mut good = gw.client("10", "1", "ADMIN").await;
    good.request("join", &json!("batch:1"), WAIT).await.unwrap();

    let bad = gw.client("11", "1", "ADMIN").await;
    for req in [
        json!(42),
        json!({ "room": 5 }),
        json!(null),
        json!("no-colon"),
        json!("user:12"),
    ] {
        let ack = bad.request("join", &req, WAIT).await.unwrap();
        assert_eq!(ack["ok"], false, "{req} -> {ack}");
        assert!(
            ack["error"]["code"].is_string() && ack["error"]["message"].is_string(),
            "{ack}"
        );
    }
    bad.send_raw("42[\"join\"").await.unwrap();
    bad.send_raw("garbage").await.unwrap();
    let oversized = format!("42[\"join\",\"{}\"]", "a".repeat(20_000));
    bad.send_raw(&oversized).await.unwrap();

    let (s, _) = gw.publish(&batch_created(1, &["batch:1"], 1)).await;
    assert_eq!(s, 200);
    assert!(
        good.wait_for("batch_update", WAIT).await.is_some(),
        "a misbehaving client disturbed another"
    );
    assert_eq!(gw.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn join_limits_and_roles() {
    let gw = Gateway::start(&[
        ("GATEWAY_MAX_ROOMS_PER_SOCKET", "2"),
        ("GATEWAY_ROOM_ROLES", "incident=ADMIN|INVIGILATOR"),
    ]);
    let student = gw.client("10", "1", "STUDENT").await;
    let admin = gw.client("11", "1", "ADMIN").await;
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("ok").to_string();
    assert_eq!(
        code(
            &student
                .request("join", &json!("incident:1"), WAIT)
                .await
                .unwrap()
        ),
        "forbidden_role"
    );
    assert_eq!(
        code(
            &admin
                .request("join", &json!("incident:1"), WAIT)
                .await
                .unwrap()
        ),
        "ok"
    );
    assert_eq!(
        code(
            &student
                .request("join", &json!("batch:1"), WAIT)
                .await
                .unwrap()
        ),
        "ok"
    );
    assert_eq!(
        code(
            &student
                .request("join", &json!("batch:1"), WAIT)
                .await
                .unwrap()
        ),
        "ok",
        "joining twice is idempotent"
    );
    assert_eq!(
        code(
            &student
                .request("join", &json!("exam:1"), WAIT)
                .await
                .unwrap()
        ),
        "ok"
    );
    assert_eq!(
        code(
            &student
                .request("join", &json!("course:1"), WAIT)
                .await
                .unwrap()
        ),
        "too_many_rooms"
    );
    assert_eq!(
        code(
            &student
                .request("leave", &json!("exam:1"), WAIT)
                .await
                .unwrap()
        ),
        "ok"
    );
    assert_eq!(
        code(
            &student
                .request("join", &json!("course:1"), WAIT)
                .await
                .unwrap()
        ),
        "ok"
    );
    assert_eq!(
        code(
            &student
                .request("join", &json!("secret:1"), WAIT)
                .await
                .unwrap()
        ),
        "room_kind_not_allowed"
    );
    assert_eq!(
        code(
            &student
                .request("leave", &json!("user:10"), WAIT)
                .await
                .unwrap()
        ),
        "forbidden_room"
    );
}

#[tokio::test]
async fn metrics_follow_real_traffic() {
    let gw = Gateway::start(&[]);
    let mut a = gw.client("10", "1", "ADMIN").await;
    let refused = Client::connect(&gw.url(), Some(json!({ "token": "x.y.z" }))).await;
    assert!(
        matches!(refused, Err(common::client::ClientError::Refused(ref m)) if m == "token_malformed"),
        "{:?}",
        refused.err()
    );
    gw.publish(
        &batch_created(1, &[], 1)
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.remove("rooms");
                Value::Object(o)
            })
            .unwrap(),
    )
    .await;
    assert!(a.wait_for("batch_update", WAIT).await.is_some());
    // The relay counts a delivery right after writing it, so the client can be faster.
    let m = gw
        .wait_metrics("the delivery counted", |m| {
            metric(m, "gateway_delivery_lag_seconds_count", "") >= 1.0
                && metric(m, "gateway_events_delivered_total", "") >= 1.0
        })
        .await;
    assert_eq!(
        metric(&m, "gateway_connections", "transport=\"websocket\""),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "gateway_auth_failures_total",
            "reason=\"token_malformed\""
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "gateway_events_received_total",
            "channel=\"batch_update\""
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "gateway_events_delivered_total",
            "channel=\"batch_update\""
        ),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "gateway_rooms", ""), 2.0, "{m}");
    assert!(
        metric(&m, "gateway_delivery_lag_seconds_count", "") >= 1.0,
        "{m}"
    );
    a.close().await;
}

#[tokio::test]
async fn cli_mints_tokens_and_publishes() {
    let gw = Gateway::start(&[]);
    let out = Command::new(common::binary())
        .args([
            "token",
            "--sub",
            "10",
            "--institution",
            "1",
            "--role",
            "ADMIN",
            "--ttl",
            "1h",
        ])
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut c = Client::connect(&gw.url(), Some(json!({ "token": minted })))
        .await
        .expect("CLI token accepted");
    let auth = c.wait_for("authenticated", WAIT).await.unwrap();
    assert_eq!(
        (auth["userId"].as_str(), auth["institutionId"].as_str()),
        (Some("10"), Some("1"))
    );
    c.request("join", &json!("batch:456"), WAIT).await.unwrap();

    let payload = r#"{"scriptId":1,"batchId":456,"studentId":9,"studentName":"Ada","courseCode":"CS101","courseName":"Intro","submittedAt":"2026-11-28T10:00:00Z","institutionId":1}"#;
    let out = common::cli_publish(
        &gw.url(),
        "script_submission",
        "script_submitted",
        payload,
        Some("batch:456"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["rooms"][0]["offset"], 1, "{printed}");
    let e = c.wait_for("script_submission", WAIT).await.unwrap();
    assert_eq!(e["id"], printed["id"]);

    let out = common::cli_publish(
        &gw.url(),
        "script_submission",
        "script_submitted",
        "{}",
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("payload.scriptId"));
}

#[test]
fn bad_settings_stop_startup_with_one_line_naming_them() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "JWT_SECRET"),
        (&[("JWT_SECRET", "short")], "JWT_SECRET"),
        (
            &[("JWT_SECRET", SECRET), ("GATEWAY_LISTEN", "not-an-address")],
            "GATEWAY_LISTEN",
        ),
        (
            &[("JWT_SECRET", SECRET), ("GATEWAY_AUTH_GRACE", "soon")],
            "GATEWAY_AUTH_GRACE",
        ),
        (
            &[("JWT_SECRET", SECRET), ("PUBLISH_API_KEYS", "tiny")],
            "PUBLISH_API_KEYS",
        ),
        (
            &[
                ("JWT_SECRET", SECRET),
                ("JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
            ],
            "JWT_SECRET or JWT_PUBLIC_KEY_FILE",
        ),
        (
            &[("JWT_PUBLIC_KEY_FILE", "/nonexistent.pem")],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            &[("JWT_SECRET", SECRET), ("GATEWAY_ROOM_ROLES", "exam")],
            "GATEWAY_ROOM_ROLES",
        ),
        (
            // A cut slow consumer could not recover the 2,048 events its queue held.
            &[("JWT_SECRET", SECRET), ("GATEWAY_SOCKET_BUFFER", "2048")],
            "GATEWAY_SOCKET_BUFFER",
        ),
    ];
    for (env, needle) in cases {
        let mut cmd = Command::new(common::binary());
        cmd.env_remove("JWT_SECRET")
            .env_remove("PUBLISH_API_KEYS")
            .env_remove("GATEWAY_LISTEN");
        cmd.args(["--admin-listen", "127.0.0.1:0"])
            .envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(needle), "{env:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
    }
}

#[tokio::test]
async fn dev_mode_generates_a_secret_and_says_so() {
    let gw = Gateway::start(&[("JWT_SECRET", ""), ("GATEWAY_DEV", "true")]);
    let log = gw.log();
    assert!(log.contains("DEVELOPMENT MODE"), "{log}");
    // The test secret is not the one in use: its tokens are refused.
    let refused = Client::connect(
        &gw.url(),
        Some(json!({ "token": token("1", "1", "ADMIN", 60) })),
    )
    .await;
    assert!(
        matches!(refused, Err(common::client::ClientError::Refused(ref m)) if m == "token_invalid_signature")
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let mut gw = Gateway::start(&[]);
    let mut c = gw.client("10", "1", "ADMIN").await;
    let status = gw.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
    assert!(c
        .wait_for(common::client::DISCONNECTED, WAIT)
        .await
        .is_some());
    assert!(gw.log().contains("gateway stopped"));
}

#[tokio::test]
async fn drain_waits_not_ready_and_a_second_signal_ends_it_at_once() {
    let mut gw = Gateway::start(&[
        ("GATEWAY_DRAIN_DELAY", "30s"),
        ("GATEWAY_DRAIN_PERIOD", "30s"),
    ]);
    let mut c = gw.client("10", "1", "ADMIN").await;
    gw.sigterm();
    gw.wait_readyz(503).await;
    assert_eq!(gw.get("/healthz").await.0, 200, "alive while draining");
    let (status, body) = gw.get("/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(
        status, 503,
        "no new Engine.IO session on a draining gateway: {body}"
    );
    assert!(body.contains("\"draining\""), "{body}");
    assert!(gw.is_running());
    // Still serving during the delay: the connected client is untouched.
    let (s, _) = gw.publish(&batch_created(1, &["institution:1"], 1)).await;
    assert_eq!(s, 200);
    assert!(c.wait_for("batch_update", WAIT).await.is_some());
    let status = gw.terminate();
    assert_eq!(
        status.code(),
        Some(130),
        "second signal: exit at once\n{}",
        gw.log()
    );
}

/// Reads a raw WebSocket until a text message starting with `prefix` arrives.
async fn skip_to(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    prefix: &str,
) {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message starting with {prefix} in time"))
            .expect("connection open")
            .expect("a message");
        if msg.to_text().unwrap_or("").starts_with(prefix) {
            return;
        }
    }
}

#[tokio::test]
async fn a_slow_consumer_is_cut_and_counted_while_others_get_everything() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let gw = Gateway::start(&[
        ("GATEWAY_MAX_REPLAY", "144"),
        ("GATEWAY_SOCKET_BUFFER", "80"),
    ]);
    let mut fast = gw.client("10", "1", "ADMIN").await;
    fast.request("join", &json!("batch:1"), WAIT).await.unwrap();

    // A client that joins, then never reads again.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.public);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.send(Message::text(format!(
        "40{}",
        json!({ "token": token("11", "1", "ADMIN", 600) })
    )))
    .await
    .unwrap();
    // Like the stock client: events only after the namespace connect is confirmed.
    skip_to(&mut ws, "40").await;
    ws.send(Message::text("421[\"join\",\"batch:1\"]"))
        .await
        .unwrap();
    skip_to(&mut ws, "431").await;

    let big = "x".repeat(60_000);
    let events = 300;
    let publisher = {
        let url = gw.url();
        let big = big.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..events {
                let mut body = batch_created(1, &["batch:1"], i);
                body["payload"]["notes"] = json!(big);
                let r = http
                    .post(format!("{url}/v1/publish"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    for want in 0..events {
        let e = fast
            .wait_for("batch_update", WAIT)
            .await
            .unwrap_or_else(|| panic!("fast client missed event {want}"));
        assert_eq!(e["payload"]["batchId"], want);
    }
    publisher.await.unwrap();
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gateway_slow_consumer_disconnects_total",
            "transport=\"websocket\""
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "gateway_delivery_failures_total",
            "reason=\"buffer_full\""
        ) >= 1.0,
        "{m}"
    );
    drop(ws);
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_a_public_key_file() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    openssl(&["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "ec.pem",
    ]);
    openssl(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "ec8.pem",
    ]);
    openssl(&["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub.pem"]);
    let claims =
        json!({ "sub": 10, "institutionId": 1, "role": "ADMIN", "exp": common::now() + 600 });
    let cases = [
        (
            "RS256",
            "rsa.pub.pem",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&std::fs::read(dir.path().join("rsa.pem")).unwrap()).unwrap(),
        ),
        (
            "ES256",
            "ec.pub.pem",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&std::fs::read(dir.path().join("ec8.pem")).unwrap()).unwrap(),
        ),
    ];
    for (alg, public, algorithm, key) in cases {
        let path = dir.path().join(public);
        let gw = Gateway::start(&[
            ("JWT_SECRET", ""),
            ("JWT_PUBLIC_KEY_FILE", path.to_str().unwrap()),
            ("JWT_ALGORITHM", alg),
        ]);
        let good = encode(&Header::new(algorithm), &claims, &key).unwrap();
        let mut c = Client::connect(&gw.url(), Some(json!({ "token": good })))
            .await
            .expect(alg);
        let auth = c
            .wait_for("authenticated", WAIT)
            .await
            .expect("authenticated");
        assert_eq!(auth["userId"], "10", "{alg}");
        // An HS256 token signed with the public key as a secret (algorithm confusion) is refused.
        let pem = std::fs::read(&path).unwrap();
        let forged = encode(&Header::default(), &claims, &EncodingKey::from_secret(&pem)).unwrap();
        let refused = Client::connect(&gw.url(), Some(json!({ "token": forged }))).await;
        assert!(
            matches!(refused, Err(common::client::ClientError::Refused(ref m)) if m == "token_algorithm_not_allowed"),
            "{alg}: {:?}",
            refused.err()
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let mut gw = Gateway::start(&[("GATEWAY_LOG_FORMAT", "json")]);
    gw.client("10", "1", "ADMIN").await;
    gw.terminate();
    let log = gw.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[tokio::test]
async fn a_full_gateway_refuses_new_connections_at_once() {
    let gw = Gateway::start(&[("GATEWAY_MAX_CONNECTIONS", "3")]);
    let a = gw.client("10", "1", "ADMIN").await;
    let _b = gw.client("11", "1", "ADMIN").await;
    let _c = gw.client("12", "1", "ADMIN").await;
    let refused = tokio::time::timeout(
        WAIT,
        Client::connect(
            &gw.url(),
            Some(json!({ "token": token("13", "1", "ADMIN", 60) })),
        ),
    )
    .await
    .expect("a full gateway answers at once instead of leaving the client hanging");
    assert!(refused.is_err(), "a fourth connection was accepted");
    let m = gw.metrics().await;
    assert!(
        metric(&m, "gateway_connections_refused_total", "") >= 1.0,
        "{m}"
    );
    // The readiness gauge is read at each scrape.
    gw.wait_metrics("a full gateway not ready", |m| {
        metric(m, "gateway_ready", "") == 0.0
    })
    .await;
    a.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = Client::connect(
            &gw.url(),
            Some(json!({ "token": token("14", "1", "ADMIN", 60) })),
        )
        .await
        {
            assert!(c.wait_for("authenticated", WAIT).await.is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room freed by a leaving client was never reused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn joins_and_publishes_are_rate_limited_with_a_clear_answer() {
    // One per second: every request below takes milliseconds, so the second is over budget.
    let gw = Gateway::start(&[("GATEWAY_JOIN_RATE", "1"), ("GATEWAY_PUBLISH_RATE", "1")]);
    let c = gw.client("10", "1", "ADMIN").await;
    let mut codes = Vec::new();
    for i in 0..4 {
        let ack = c
            .request("join", &json!(format!("batch:{i}")), WAIT)
            .await
            .unwrap();
        codes.push(ack["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(codes[0], "ok", "{codes:?}");
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(
        limited >= 1 && codes.iter().all(|c| c == "ok" || c == "rate_limited"),
        "{codes:?}"
    );

    let (s, b) = gw.publish(&batch_created(1, &["batch:0"], 0)).await;
    assert_eq!(s, 200, "{b}");
    let mut refused = None;
    for i in 1..4 {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/publish", gw.url()))
            .bearer_auth(KEY)
            .json(&batch_created(1, &["batch:0"], i))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
    }
    let resp = refused.expect("a key over its publish rate gets 429");
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "gateway_publish_requests_total",
            "result=\"rate_limited\""
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "gateway_join_refused_total", "reason=\"rate_limited\""),
        limited as f64,
        "{m}"
    );
}

/// A body far over the limit gets its 413 every time, also from a client that sends the whole
/// body before reading the answer (Node's fetch): the gateway reads and discards the rest
/// before answering instead of closing on a client that is still sending.
#[test]
fn an_oversized_publish_always_gets_its_413() {
    let gw = Gateway::start(&[]);
    let script = common::node::Script::start(
        "oversized-publish.mjs",
        &[
            ("GATEWAY_URL", gw.url()),
            ("KEY", KEY.to_string()),
            ("TRIES", "30".to_string()),
        ],
    );
    let done = script.next("done");
    let answers = done["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 30, "{done}");
    for a in answers {
        assert_eq!(
            (a["status"].as_u64(), a["code"].as_str()),
            (Some(413), Some("body_too_large")),
            "{done}"
        );
    }
}

/// Once a socket is told it left a room, it gets none of the room's later events, however soon
/// they are published (the leave reaches the relay before any event published after its ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leave_ack_no_event_of_the_room_arrives() {
    let gw = Gateway::start(&[("GATEWAY_JOIN_RATE", "1000")]);
    gw.wait_readyz(200).await;
    let mut c = gw.client("10", "1", "ADMIN").await;
    for round in 0..40 {
        let ack = c.request("join", &json!("batch:1"), WAIT).await.unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
        let ack = c.request("join", &json!("batch:2"), WAIT).await.unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
        let ack = c.request("leave", &json!("batch:1"), WAIT).await.unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
        let (to_left, to_other) = (
            batch_created(1, &["batch:1"], 1000 + round),
            batch_created(1, &["batch:2"], 2000 + round),
        );
        let (left, later) = tokio::join!(gw.publish(&to_left), gw.publish(&to_other));
        assert_eq!((left.0, later.0), (200, 200), "{left:?} {later:?}");
        // The sentinel of the room it is still in arrives; nothing of the left room does,
        // before it or after it (a quiet window).
        let ev = c
            .wait_for("batch_update", WAIT)
            .await
            .expect("the sentinel");
        assert_eq!(ev["room"], "batch:2", "round {round}: {ev}");
        if let Some((name, ev)) = c.next_event(std::time::Duration::from_millis(30)).await {
            panic!("round {round}: after the sentinel came {name} {ev}");
        }
        let ack = c.request("leave", &json!("batch:2"), WAIT).await.unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
    }
}
