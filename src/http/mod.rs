//! HTTP: the public router (health, readiness, publish API, catalog, development tokens under
//! `--dev`; Socket.IO is layered on top of it, CORS around both) and the admin router (`/metrics`).

pub mod catalog;
pub mod cors;
pub mod dev;
pub mod error;
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
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/publish", post(publish::publish))
        .route("/v1/publish/batch", post(publish::publish_batch))
        .route("/v1/catalog", get(catalog::catalog));
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
    if handshake && state.is_draining() {
        return error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this gateway is shutting down; connect to another one",
        )
        .into_response();
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
