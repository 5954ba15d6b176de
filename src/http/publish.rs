//! `POST /v1/publish` and `POST /v1/publish/batch`.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::{ApiError, ErrorCode};
use super::keys;
use crate::bus::BusError;
use crate::events::{RoomKey, RoomName, TenantId, ValidPublish};
use crate::metrics;
use crate::state::AppState;
use crate::tenancy::{Caller, Scope};

/// Where one event landed: a room and its offset there.
#[derive(Debug, Serialize)]
pub struct RoomOffset {
    /// Client-facing room name.
    pub room: RoomName,
    /// The event's offset in that room.
    pub offset: u64,
}

/// Answer to a publish: the event id and its offset in every room.
#[derive(Debug, Serialize)]
pub struct Published {
    /// Event id.
    pub id: String,
    /// Rooms and offsets.
    pub rooms: Vec<RoomOffset>,
}

/// Answer to a batch publish, in request order.
#[derive(Debug, Serialize)]
pub struct BatchPublished {
    /// One entry per event.
    pub results: Vec<Published>,
}

/// Counts every publish request by result (`ok` or the error code), whichever step answered
/// it: a layer, so requests an extractor refuses are counted too.
pub async fn count_results(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(req).await;
    let result = match response.extensions().get::<ErrorCode>() {
        Some(code) => code.0,
        None => "ok",
    };
    ::metrics::counter!(metrics::PUBLISH_REQUESTS, "result" => result).increment(1);
    response
}

/// The request's API key, checked for the `publish` scope: the caller behind it (its name is
/// the rate limit's key, its tenants bound what it may publish).
pub struct PublishKey(Caller);

impl FromRequestParts<Arc<AppState>> for PublishKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        keys::caller(st, &parts.headers, Scope::Publish).map(PublishKey)
    }
}

/// A JSON request body of one event (`BATCH == false`) or a batch, read up to its size limit.
pub struct JsonBody<const BATCH: bool>(Box<RawValue>);

/// Most bytes of an oversized body read (and thrown away) before the 413 is sent: a client
/// still sending when the answer comes and the connection closes would see a broken pipe
/// instead of the 413.
const DISCARD_MAX: usize = 16 * 1024 * 1024;

impl<const BATCH: bool> FromRequest<Arc<AppState>> for JsonBody<BATCH> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the request body as JSON with Content-Type: application/json",
            ));
        }
        let events = if BATCH { st.config.max_batch } else { 1 };
        // Room for the payloads plus their envelopes.
        let limit = events * (st.config.publish.max_payload_bytes + 16 * 1024);
        let mut body = req.into_body().into_data_stream();
        let mut bytes = Vec::new();
        let mut seen = 0usize;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("invalid_body", format!("the body could not be read: {e}"))
            })?;
            seen += chunk.len();
            if seen <= limit {
                bytes.extend_from_slice(&chunk);
            } else if seen > DISCARD_MAX {
                break;
            }
        }
        if seen > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {limit} bytes"),
            ));
        }
        let raw = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        })?;
        Ok(JsonBody(raw))
    }
}

/// The answer to a validated event the bus refused; a tenant over its rate is counted.
fn bus_refused(state: &AppState, tenant: &TenantId, e: BusError) -> ApiError {
    match e {
        BusError::Unavailable(m) => {
            tracing::warn!(error = %m, "publish refused: bus unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "bus_unavailable",
                format!("the event bus is unavailable, nothing was published; retry later ({m})"),
            )
        }
        BusError::TenantRateLimited(wait) => {
            state.tenancy.publish_refused(tenant);
            tenant_limited(tenant, wait)
        }
        BusError::Rejected(m) | BusError::Config(m) => {
            tracing::error!(error = %m, "the bus refused a validated event");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bus_rejected",
                "the event bus refused the event; it was not published (see the gateway log)",
            )
        }
    }
}

async fn publish_valid(state: &AppState, p: ValidPublish) -> Result<Published, ApiError> {
    let keys: Vec<RoomKey> = p
        .rooms
        .iter()
        .map(|r| RoomKey::new(p.tenant.clone(), r.clone()))
        .collect();
    let id = p.event.id.to_string();
    let channel = metrics::channel_label(&p.event.channel);
    let offsets = state
        .bus
        .publish(Arc::new(p.event), keys)
        .await
        .map_err(|e| bus_refused(state, &p.tenant, e))?;
    ::metrics::counter!(metrics::EVENTS_PUBLISHED, "channel" => channel)
        .increment(offsets.len() as u64);
    state.tenancy.publish_allowed(&p.tenant);
    let rooms = p
        .rooms
        .into_iter()
        .zip(offsets)
        .map(|(room, offset)| RoomOffset { room, offset })
        .collect();
    Ok(Published { id, rooms })
}

/// `tenant` is over its publish rate.
fn tenant_limited(tenant: &TenantId, wait: std::time::Duration) -> ApiError {
    ApiError {
        retry_after: Some(wait),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tenant_rate_limited",
            format!(
                "institution {tenant} is over its publish rate (events per second, across the fleet); nothing was published; retry in {} ms",
                wait.as_millis().max(1)
            ),
        )
    }
}

/// Takes `events` from the key's publish budget (`GATEWAY_PUBLISH_RATE` per second), then from
/// the tenants' publish rates where `rtg_publish` does not take them (the embedded bus, a Redis
/// Cluster): an event costs one per room.
async fn check_rates(
    state: &AppState,
    key: &Caller,
    events: &[ValidPublish],
) -> Result<(), ApiError> {
    check_key_rate(state, key, events.len())?;
    let mut per_tenant: Vec<(&TenantId, usize)> = Vec::new();
    for p in events {
        match per_tenant.iter_mut().find(|(t, _)| *t == &p.tenant) {
            Some((_, n)) => *n += p.rooms.len(),
            None => per_tenant.push((&p.tenant, p.rooms.len())),
        }
    }
    for (tenant, n) in per_tenant {
        state
            .tenancy
            .take_publish_rate(tenant, n)
            .await
            .map_err(|wait| tenant_limited(tenant, wait))?;
    }
    Ok(())
}

fn check_key_rate(state: &AppState, key: &Caller, events: usize) -> Result<(), ApiError> {
    let limited = |retry: Option<std::time::Duration>| ApiError {
        retry_after: retry,
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this API key may publish {} events per second; slow down{}",
                state.config.publish_rate,
                retry
                    .map(|d| format!(" (retry in {} ms)", d.as_millis().max(1)))
                    .unwrap_or_default()
            ),
        )
    };
    let n = std::num::NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX))
        .unwrap_or(std::num::NonZeroU32::MIN);
    match state.publish_limiter.check_key_n(&key.name, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let now = governor::clock::Clock::now(state.publish_limiter.clock());
            Err(limited(Some(not_until.wait_time_from(now))))
        }
        Err(_) => Err(limited(None)),
    }
}

/// One publish request, validated and within the key's tenants.
fn validate(state: &AppState, key: &Caller, raw: &RawValue) -> Result<ValidPublish, ApiError> {
    let valid = state.config.publish.validate(raw)?;
    keys::require_tenant(key, &valid.tenant, "institutionId")?;
    Ok(valid)
}

/// `POST /v1/publish`: one event.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    PublishKey(key): PublishKey,
    JsonBody(raw): JsonBody<false>,
) -> Result<Json<Published>, ApiError> {
    let valid = validate(&state, &key, &raw)?;
    check_rates(&state, &key, std::slice::from_ref(&valid)).await?;
    Ok(Json(publish_valid(&state, valid).await?))
}

/// `POST /v1/publish/batch`: an array of events, all validated before any is published.
pub async fn publish_batch(
    State(state): State<Arc<AppState>>,
    PublishKey(key): PublishKey,
    JsonBody(raw): JsonBody<true>,
) -> Result<Json<BatchPublished>, ApiError> {
    let max = state.config.max_batch;
    let items: Vec<Box<RawValue>> = serde_json::from_str(raw.get()).map_err(|_| {
        ApiError::bad_request(
            "invalid_body",
            "the batch body must be a JSON array of publish requests",
        )
    })?;
    if items.is_empty() {
        return Err(ApiError::bad_request("invalid_body", "the batch is empty"));
    }
    if items.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} events in one batch; the limit is {max}", items.len()),
        ));
    }
    let mut valid = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        valid.push(validate(&state, &key, item).map_err(|mut e| {
            e.field = Some(match e.field {
                Some(f) => format!("[{i}].{f}"),
                None => format!("[{i}]"),
            });
            e
        })?);
    }
    check_rates(&state, &key, &valid).await?;
    let mut results = Vec::with_capacity(valid.len());
    for p in valid {
        results.push(publish_valid(&state, p).await?);
    }
    Ok(Json(BatchPublished { results }))
}
