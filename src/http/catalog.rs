//! `GET /v1/catalog`: the effective event catalog, for tools and SDKs. It holds no secrets, so
//! it needs no key; an `ETag` lets clients revalidate cheaply (`If-None-Match` → 304).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// The catalog document (compact JSON, channels and events in document order).
pub async fn catalog(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let catalog = &state.config.publish.catalog;
    let etag = HeaderValue::from_str(catalog.etag()).ok();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == catalog.etag())
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            catalog.json().to_owned(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    // Caches may keep it but must ask again: a restarted gateway may run another catalog.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
