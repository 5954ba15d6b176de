//! HTTP: the public router (health, readiness, publish API; Socket.IO is layered on top of it)
//! and the admin router (`/metrics`).

pub mod error;
pub mod publish;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use crate::state::AppState;

/// Routes of the public listener (without Socket.IO, which `run` layers on).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/publish", post(publish::publish))
        .route("/v1/publish/batch", post(publish::publish_batch))
        .with_state(state)
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
