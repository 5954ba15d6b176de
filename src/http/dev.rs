//! `GET /dev/token` under `--dev`: a development token for a demo page, so a newcomer needs no
//! identity service. The route does not exist without `--dev` (404).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use crate::auth::DevToken;
use crate::config::parse_duration;
use crate::state::AppState;

/// Where development tokens are served.
pub const TOKEN_PATH: &str = "/dev/token";
/// Lifetime of a token when `ttl` is not given.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime a development token may ask for.
const MAX_TTL: Duration = Duration::from_secs(7 * 86400);

/// `?sub=10&institution=1&role=ADMIN&ttl=1h`.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    sub: Option<String>,
    institution: Option<String>,
    role: Option<String>,
    ttl: Option<String>,
}

/// The route, for a gateway started with `--dev`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new().route(TOKEN_PATH, get(token))
}

async fn token(
    State(st): State<Arc<AppState>>,
    Query(q): Query<TokenQuery>,
) -> Result<Json<DevToken>, ApiError> {
    let Some(tokens) = &st.config.dev_tokens else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "development tokens are served only under --dev",
        ));
    };
    let required = |v: Option<String>, field: &str| {
        v.filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::invalid(
                "invalid_query",
                field,
                format!("{field} is required, e.g. ?sub=10&institution=1&role=ADMIN"),
            )
        })
    };
    let sub = required(q.sub, "sub")?;
    let institution = required(q.institution, "institution")?;
    let role = q.role.unwrap_or_else(|| "STUDENT".to_owned());
    let ttl = match q.ttl.as_deref().map_or(Ok(DEFAULT_TTL), parse_duration) {
        Ok(t) if t.is_zero() || t > MAX_TTL => Err("must be between 1s and 7d".to_owned()),
        ttl => ttl,
    }
    .map_err(|m| ApiError::invalid("invalid_query", "ttl", m))?;
    let minted = tokens.mint(&sub, &institution, &role, ttl).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot sign the token: {e}"),
        )
    })?;
    // Never hand out a token this gateway would refuse (a user id with bad characters, ...).
    st.config.verifier.verify(&minted.token).map_err(|e| {
        ApiError::bad_request(
            e.code(),
            format!("the gateway would refuse this token ({e}); check sub, institution and role"),
        )
    })?;
    Ok(Json(minted))
}
