//! Browser access at the HTTP level: CORS answers of Engine.IO long-polling and its
//! preflights, no CORS on the publish API, `Origin` checks of WebSocket handshakes on both
//! transports (the gateway's own and socketioxide's upgrade of a polling session), and the
//! development token route (present only under `--dev`). The same behaviour in a real browser
//! is in tests/browser.rs.

mod common;

use common::client::Client;
use common::{batch_created, metric, Gateway, WAIT};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const APP: &str = "http://app.test:5173";
const OTHER: &str = "http://evil.test:5173";
const POLL: &str = "/socket.io/?EIO=4&transport=polling";

async fn gateway(env: &[(&str, &str)]) -> Gateway {
    let gw = Gateway::start(env);
    gw.wait_readyz(200).await;
    gw
}

/// A request to `gw` with optional `Origin` and extra headers.
async fn request(
    gw: &Gateway,
    method: Method,
    path: &str,
    origin: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", gw.url()));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = timeout(WAIT, req.send())
        .await
        .expect("answer in time")
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every `access-control-*` header of a response.
fn cors_headers(h: &HeaderMap) -> Vec<String> {
    h.keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

/// A preflight for a POST with `Content-Type` (what a client with extra headers would send).
async fn preflight(gw: &Gateway, path: &str, origin: &str) -> (u16, HeaderMap) {
    let (status, h, _) = request(
        gw,
        Method::OPTIONS,
        path,
        Some(origin),
        &[
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-custom"),
        ],
    )
    .await;
    (status, h)
}

/// A raw WebSocket handshake for `path` with `origin`: status, head and body.
async fn ws_handshake(gw: &Gateway, path: &str, origin: Option<&str>) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(gw.public).await.expect("connect");
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("handshake answer in time")
            .unwrap();
        assert!(n > 0, "closed before an answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().expect("status code");
    let mut body = buf[end..].to_vec();
    if status != 101 {
        let _ = timeout(WAIT, tcp.read_to_end(&mut body)).await;
    }
    (status, head, String::from_utf8_lossy(&body).to_string())
}

/// Opens a polling session (without `Origin`) and returns its sid.
async fn polling_sid(gw: &Gateway) -> String {
    let (status, _, body) = request(gw, Method::GET, POLL, None, &[]).await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
    open["sid"].as_str().expect("sid").to_owned()
}

fn assert_refused_origin(status: u16, body: &str, what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: JSON: {body}"));
    assert_eq!(v["error"]["code"], "origin_not_allowed", "{what}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("GATEWAY_CORS_ORIGINS")),
        "{what}: {v}"
    );
}

#[tokio::test]
async fn polling_answers_listed_origins_only() {
    let gw = gateway(&[("GATEWAY_CORS_ORIGINS", &format!("{APP},https://admin.test"))]).await;

    // The handshake and the preflight of a listed origin: the origin echoed (never `*`),
    // credentials allowed (withCredentials: true), POST allowed, the asked headers mirrored.
    let (status, h, body) = request(&gw, Method::GET, POLL, Some(APP), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{"), "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(
        header(&h, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "{h:?}"
    );
    let (status, h) = preflight(&gw, POLL, APP).await;
    assert!((200..300).contains(&status), "{status} {h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    let methods = header(&h, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = header(&h, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("content-type") && allowed.contains("x-custom"),
        "{allowed}"
    );
    assert!(header(&h, "access-control-max-age").is_some(), "{h:?}");

    // A POST of a session (a Socket.IO connect packet) from the page gets the header too.
    let sid = polling_sid(&gw).await;
    let (status, h, body) = request(
        &gw,
        Method::POST,
        &format!("{POLL}&sid={sid}"),
        Some(APP),
        &[("content-type", "text/plain;charset=UTF-8")],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));

    // An origin not listed gets no `Access-Control-Allow-Origin` (the browser then blocks the
    // response), and neither does a listed origin written differently.
    for origin in [OTHER, "http://app.test", "https://app.test:5173", "null"] {
        let (status, h, _) = request(&gw, Method::GET, POLL, Some(origin), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "access-control-allow-origin"), None, "{origin}");
        let (_, h) = preflight(&gw, POLL, origin).await;
        assert_eq!(header(&h, "access-control-allow-origin"), None, "{origin}");
    }

    // No Origin (a non-browser client): served as always.
    let (status, h, body) = request(&gw, Method::GET, POLL, None, &[]).await;
    assert!(status == 200 && body.starts_with("0{"), "{status} {body}");
    assert_eq!(header(&h, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn publish_api_and_health_are_not_opened_to_browsers() {
    let gw = gateway(&[("GATEWAY_CORS_ORIGINS", APP)]).await;
    let (status, h, body) = request(
        &gw,
        Method::POST,
        "/v1/publish",
        Some(APP),
        &[
            ("authorization", &format!("Bearer {}", common::KEY)),
            ("content-type", "application/json"),
        ],
    )
    .await;
    // The server still answers (a backend may send any header; this body is empty), but
    // without CORS headers a browser cannot read the answer.
    assert_eq!(status, 400, "{body}");
    assert_eq!(cors_headers(&h), Vec::<String>::new());
    for path in ["/v1/publish", "/v1/publish/batch", "/healthz", "/readyz"] {
        let (status, h) = preflight(&gw, path, APP).await;
        assert_eq!(cors_headers(&h), Vec::<String>::new(), "{path}: {status}");
        assert!(
            status >= 400,
            "{path}: a preflight must not succeed: {status}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        let (_, h, _) = request(&gw, Method::GET, path, Some(APP), &[]).await;
        assert_eq!(cors_headers(&h), Vec::<String>::new(), "{path}");
    }
    // A real publish with an Origin still works for backends; the body is plain JSON.
    let (status, body) = gw.publish(&batch_created(1, &["batch:1"], 1)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn without_a_list_nothing_is_opened_and_no_websocket_is_refused() {
    let gw = gateway(&[]).await;
    let (status, h, _) = request(&gw, Method::GET, POLL, Some(APP), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cors_headers(&h), Vec::<String>::new());
    let (_, h) = preflight(&gw, POLL, APP).await;
    assert_eq!(cors_headers(&h), Vec::<String>::new());
    // Browsers apply no CORS to WebSockets: without a list every origin may connect, as before.
    let (status, head, _) =
        ws_handshake(&gw, "/socket.io/?EIO=4&transport=websocket", Some(OTHER)).await;
    assert_eq!(status, 101, "{head}");
    let sid = polling_sid(&gw).await;
    let (status, head, _) = ws_handshake(
        &gw,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        Some(OTHER),
    )
    .await;
    assert_eq!(status, 101, "{head}");
}

#[tokio::test]
async fn websocket_origins_are_checked_on_both_transports() {
    let gw = gateway(&[("GATEWAY_CORS_ORIGINS", APP)]).await;
    let direct = "/socket.io/?EIO=4&transport=websocket";

    // The gateway's own transport (a direct WebSocket handshake).
    let (status, _, body) = ws_handshake(&gw, direct, Some(OTHER)).await;
    assert_refused_origin(status, &body, "direct WebSocket, other origin");
    let (status, head, _) = ws_handshake(&gw, direct, Some(APP)).await;
    assert_eq!(status, 101, "{head}");
    let (status, head, _) = ws_handshake(&gw, direct, None).await;
    assert_eq!(status, 101, "no Origin: {head}");

    // socketioxide's transport (the upgrade of a polling session, which carries its sid).
    let sid = polling_sid(&gw).await;
    let upgrade = format!("{direct}&sid={sid}");
    let (status, _, body) = ws_handshake(&gw, &upgrade, Some(OTHER)).await;
    assert_refused_origin(status, &body, "upgrade, other origin");
    let (status, head, _) = ws_handshake(&gw, &upgrade, Some(APP)).await;
    assert_eq!(status, 101, "{head}");
    let sid = polling_sid(&gw).await;
    let (status, head, _) = ws_handshake(&gw, &format!("{direct}&sid={sid}"), None).await;
    assert_eq!(status, 101, "upgrade without Origin: {head}");

    // Both refusals are counted.
    gw.wait_metrics("two origin refusals", |m| {
        metric(
            m,
            "gateway_client_protocol_errors_total",
            "reason=\"origin_not_allowed\"",
        ) == 2.0
    })
    .await;

    // A client without an Origin header (a backend, a native app) connects and receives.
    let mut c = gw.client("10", "1", "ADMIN").await;
    let (status, body) = gw.publish(&batch_created(1, &["institution:1"], 7)).await;
    assert_eq!(status, 200, "{body}");
    let got = c.wait_for("batch_update", WAIT).await.expect("event");
    assert_eq!(got["payload"]["batchId"], 7, "{got}");
}

#[tokio::test]
async fn dev_tokens_exist_only_under_dev() {
    let plain = gateway(&[]).await;
    let (status, body) = plain
        .get("/dev/token?sub=10&institution=1&role=ADMIN")
        .await;
    assert_eq!(status, 404, "without --dev: {body}");

    let dev = gateway(&[("GATEWAY_DEV", "true")]).await;
    // `*` under --dev: any page may fetch a token and poll, with its origin echoed.
    let path = "/dev/token?sub=10&institution=1&role=ADMIN&ttl=10m";
    let (status, h, body) = request(&dev, Method::GET, path, Some(OTHER), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(OTHER));
    let got: Value = serde_json::from_str(&body).expect("JSON");
    let exp = got["exp"].as_i64().expect("exp");
    assert!((exp - common::now() - 600).abs() <= 2, "{got}");
    let token = got["token"].as_str().expect("token").to_owned();
    let (_, h, _) = request(&dev, Method::GET, POLL, Some(OTHER), &[]).await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some(OTHER));

    // The token is accepted by the gateway and says who was asked for.
    let mut c = Client::connect(&dev.url(), Some(json!({ "token": token })))
        .await
        .expect("connect");
    let me = c
        .wait_for("authenticated", WAIT)
        .await
        .expect("authenticated");
    assert_eq!(
        (&me["userId"], &me["institutionId"], &me["role"]),
        (&json!("10"), &json!("1"), &json!("ADMIN")),
        "{me}"
    );

    // Bad queries name the field.
    for (query, field) in [
        ("?institution=1", "sub"),
        ("?sub=10", "institution"),
        ("?sub=10&institution=1&ttl=soon", "ttl"),
        ("?sub=10&institution=1&ttl=30d", "ttl"),
    ] {
        let (status, body) = dev.get(&format!("/dev/token{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "invalid_query", "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }
}

#[tokio::test]
async fn a_bad_origin_list_stops_startup_naming_the_setting() {
    for bad in [
        "app.test",
        "http://app.test/",
        "https://app.test:443",
        "*,http://a.test",
    ] {
        let out = std::process::Command::new(common::binary())
            .args(["--check-config", "--jwt-secret", common::SECRET])
            .env("GATEWAY_CORS_ORIGINS", bad)
            .output()
            .expect("run the binary");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--cors-origins") && err.contains("GATEWAY_CORS_ORIGINS"),
            "{bad}: {err}"
        );
    }
}
