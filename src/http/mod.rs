//! HTTP: the public router (health, readiness, publish API, control API, presence, catalog,
//! development tokens under `--dev`; Socket.IO is layered on top of it, CORS around both) and the admin
//! router (`/metrics`).

pub mod catalog;
pub mod control;
pub mod cors;
pub mod dev;
pub mod error;
pub mod keys;
pub mod presence;
pub mod publish;
pub mod serve;

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
        .route("/v1/connections", get(control::connections))
        .route("/v1/disconnect", post(control::disconnect))
        .route("/v1/revoke", post(control::revoke))
        .route("/v1/rooms/leave", post(control::leave_room))
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

/// Routes of the admin listener. Process figures (resident memory, CPU, open descriptors) and
/// the readiness gauges are read at each scrape and exported beside the gateway's own metrics.
pub fn admin_router(metrics: PrometheusHandle, state: Arc<AppState>) -> Router {
    let process = std::sync::Arc::new(metrics_process::Collector::default());
    process.describe();
    Router::new().route(
        "/metrics",
        get(move || {
            process.collect();
            state.gauge_readiness();
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
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let control = state.tenancy.control_ready();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "bus": if bus { "up" } else { "down" },
        "control": if control { "up" } else { "down" },
        "draining": state.is_draining(),
    });
    (status, Json(body))
}
