//! HTTP: the public router (health, readiness, publish API, presence, catalog, development
//! tokens under `--dev`; Socket.IO is layered on top of it, CORS around both) and the admin
//! router (`/metrics`).

pub mod catalog;
pub mod cors;
pub mod dev;
pub mod error;
pub mod presence;
pub mod publish;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use crate::state::AppState;

/// Routes of the public listener (without Socket.IO, which `run` layers on).
pub fn router(state: Arc<AppState>) -> Router {
    let publish = Router::new()
        .route("/v1/publish", post(publish::publish))
        .route("/v1/publish/batch", post(publish::publish_batch))
        .route_layer(axum::middleware::from_fn(publish::count_results));
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/presence", get(presence::presence))
        .route("/v1/catalog", get(catalog::catalog))
        .merge(publish);
    if state.config.dev_tokens.is_some() {
        router = router.merge(dev::router());
    }
    router.with_state(state)
}

/// Refuses to start Engine.IO sessions (handshakes: `/socket.io/` requests without a `sid`)
/// once the gateway is draining, with 503 `draining`: the load balancer retries them on another
/// gateway (nginx: `proxy_next_upstream ... http_503`). Requests of existing sessions go on.
pub async fn refuse_new_sessions_while_draining(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let handshake = req.uri().path().starts_with("/socket.io/")
        && !req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv.starts_with("sid="));
    if let Some(refusal) = state.session_refusal().filter(|_| handshake) {
        return error::ApiError::new(refusal.status, refusal.code, refusal.message).into_response();
    }
    next.run(req).await
}

/// Moves Engine.IO requests of the MessagePack parser (`parser=msgpack` in the query, which
/// socket.io-client sends on every request of a session) to the socketioxide instance that
/// speaks it; an unknown parser is refused with 400 `unsupported_parser`.
pub async fn route_msgpack_sessions(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = req.uri();
    let Some(rest) = uri.path().strip_prefix("/socket.io") else {
        return next.run(req).await;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return next.run(req).await;
    }
    match crate::wire::wants_msgpack(uri.query().unwrap_or("")) {
        Ok(false) => {}
        Ok(true) => {
            let moved = format!(
                "{}{rest}?{}",
                crate::wire::MSGPACK_PATH,
                uri.query().unwrap_or("")
            );
            match moved.parse() {
                Ok(moved) => *req.uri_mut() = moved,
                Err(_) => {
                    return error::ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the request target could not be read",
                    )
                    .into_response()
                }
            }
        }
        Err(message) => {
            ::metrics::counter!(crate::metrics::CLIENT_PROTOCOL_ERRORS, "reason" => "unsupported_parser")
                .increment(1);
            return error::ApiError::new(StatusCode::BAD_REQUEST, "unsupported_parser", message)
                .into_response();
        }
    }
    next.run(req).await
}

/// Routes of the admin listener. Process figures (resident memory, CPU, open descriptors) are
/// read from the OS at each scrape and exported beside the gateway's own metrics.
pub fn admin_router(metrics: PrometheusHandle) -> Router {
    let process = std::sync::Arc::new(metrics_process::Collector::default());
    process.describe();
    Router::new().route(
        "/metrics",
        get(move || {
            process.collect();
            std::future::ready(metrics.render())
        }),
    )
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let bus = state.bus.is_ready();
    let ready = state.is_ready();
    ::metrics::gauge!(crate::metrics::READY).set(if ready { 1.0 } else { 0.0 });
    ::metrics::gauge!(crate::metrics::BUS_UP).set(if bus { 1.0 } else { 0.0 });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "bus": if bus { "up" } else { "down" },
        "draining": !ready && bus,
    });
    (status, Json(body))
}
