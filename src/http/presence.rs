//! `GET /v1/presence?institutionId=1&room=exam:7`: the same answer a member's socket gets, for
//! backends holding an API key with the `presence` scope for the room's institution.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::error::ApiError;
use super::keys;
use crate::events::{RoomKey, TenantId};
use crate::metrics;
use crate::presence::{Answer, PresenceError};
use crate::state::AppState;
use crate::tenancy::Scope;

fn refused(mut e: ApiError, field: Option<&str>) -> ApiError {
    ::metrics::counter!(metrics::PRESENCE_REFUSED, "reason" => e.code).increment(1);
    e.field = field.map(String::from);
    e
}

fn bad(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
    refused(ApiError::invalid(code, field, message), Some(field))
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        let status = match e {
            PresenceError::NotEnabled(..) => StatusCode::BAD_REQUEST,
            PresenceError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        refused(ApiError::new(status, e.code(), e.to_string()), None)
    }
}

/// Answers with the room's members (or its count), as the `presence` socket request does.
pub async fn presence(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Answer>, ApiError> {
    let caller = keys::caller(&state, &headers, Scope::Presence).map_err(|e| refused(e, None))?;
    let param = |name: &str| {
        query.get(name).ok_or_else(|| {
            bad(
                "invalid_request",
                name,
                "give ?institutionId=<tenant>&room=<kind:id>",
            )
        })
    };
    let tenant = TenantId::parse(param("institutionId")?)
        .map_err(|e| bad("invalid_field", "institutionId", e.0))?;
    keys::require_tenant(&caller, &tenant, "institutionId")
        .map_err(|e| refused(e, Some("institutionId")))?;
    let room = state
        .config
        .policy
        .parse_room(param("room")?)
        .map_err(|e| bad(e.code, "room", e.message))?;
    Ok(Json(
        state.presence.read(&RoomKey::new(tenant, room)).await?,
    ))
}
