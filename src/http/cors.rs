//! Browser access to the public listener. Engine.IO long-polling (and, under `--dev`, the
//! development token route) answers cross-origin requests from the allowed origins with CORS
//! headers; nothing else does, so the publish API stays closed to browsers. WebSocket
//! handshakes that reach the HTTP server (upgrades of polling sessions) have their `Origin`
//! checked here; direct WebSocket handshakes are checked the same way in [`crate::wire`].

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use super::error::ApiError;
use crate::auth::origins::{AllowedOrigins, REFUSED_CODE, REFUSED_MESSAGE};
use crate::metrics;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The origin policy and its CORS layer, built once per gateway.
#[derive(Clone)]
pub struct BrowserAccess {
    origins: AllowedOrigins,
    cors: CorsLayer,
}

impl BrowserAccess {
    /// Access for `origins`.
    pub fn new(origins: &AllowedOrigins) -> Self {
        let allowed = origins.clone();
        // The request's own origin is echoed (never `*`) and credentials are allowed, so the
        // stock client works with `withCredentials: true` too: a load balancer's affinity
        // cookie then travels with every poll. Tokens never ride on cookies, so this opens
        // nothing more than the session the page already holds.
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                allowed.allows(origin.as_bytes())
            }))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .allow_credentials(true)
            .max_age(PREFLIGHT_MAX_AGE);
        Self {
            origins: origins.clone(),
            cors,
        }
    }
}

/// Paths a page on another origin may use.
fn for_browsers(path: &str) -> bool {
    path == "/socket.io" || path.starts_with("/socket.io/") || path == super::dev::TOKEN_PATH
}

fn is_websocket_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The middleware: refuses WebSocket upgrades from origins not allowed (403
/// `origin_not_allowed`), and wraps browser paths in the CORS layer.
pub async fn browser_access(
    State(access): State<BrowserAccess>,
    req: Request,
    next: Next,
) -> Response {
    if !for_browsers(req.uri().path()) {
        return next.run(req).await;
    }
    if is_websocket_upgrade(&req) {
        let origin = req.headers().get(header::ORIGIN).map(HeaderValue::as_bytes);
        if !access.origins.admits_websocket(origin) {
            ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => REFUSED_CODE)
                .increment(1);
            tracing::debug!(origin = ?origin.map(String::from_utf8_lossy), "WebSocket upgrade refused: origin not allowed");
            return ApiError::new(StatusCode::FORBIDDEN, REFUSED_CODE, REFUSED_MESSAGE)
                .into_response();
        }
    }
    if !access.origins.is_open() {
        return next.run(req).await;
    }
    let Ok(response) = access.cors.layer(next).oneshot(req).await;
    response
}
