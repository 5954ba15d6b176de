//! The API key check shared by every key-protected endpoint: a key with the endpoint's scope,
//! then (once the request names it) the tenant. Refusals never name the key, only why.
//!
//! An endpoint applies it in two lines, e.g. a presence read:
//! `let caller = keys::caller(&state, &headers, Scope::Presence)?;` then, with the tenant it
//! reads, `keys::require_tenant(&caller, &tenant, "institutionId")?;`.

use axum::http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use crate::events::TenantId;
use crate::metrics;
use crate::state::AppState;
use crate::tenancy::{Caller, Denied, Scope};

fn refused(reason: &'static str) {
    ::metrics::counter!(metrics::API_KEY_REFUSALS, "reason" => reason).increment(1);
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The name of the key presented, if it is a valid one (for audit lines of refused calls).
pub fn key_name(state: &AppState, headers: &HeaderMap) -> Option<std::sync::Arc<str>> {
    let presented = bearer(headers)?;
    state
        .tenancy
        .keyring()
        .find(presented)
        .map(|c| c.name.clone())
}

/// The caller behind `Authorization: Bearer <key>`, if its key has `scope`.
pub fn caller(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
    state.tenancy.authorize(bearer(headers), scope).map_err(|d| match d {
        Denied::Disabled => ApiError::new(
            StatusCode::FORBIDDEN,
            "publish_disabled",
            "the HTTP API is off on this gateway; set PUBLISH_API_KEYS or GATEWAY_API_KEYS_FILE to enable it",
        ),
        Denied::Missing => {
            refused("missing");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send Authorization: Bearer <API key>",
            )
        }
        Denied::Invalid => {
            refused("invalid");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "the API key is not valid",
            )
        }
        Denied::Scope(s) => {
            refused("scope");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "scope_not_allowed",
                format!("this API key does not have the {} scope", s.as_str()),
            )
        }
    })
}

/// Refuses a caller outside its tenants (`field` names the request field holding the tenant).
pub fn require_tenant(caller: &Caller, tenant: &TenantId, field: &str) -> Result<(), ApiError> {
    if caller.has_tenant(tenant) {
        return Ok(());
    }
    refused("tenant");
    Err(ApiError {
        field: Some(field.to_string()),
        ..ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_not_allowed",
            "this API key may not act in this institution",
        )
    })
}
