//! The control API (keys with the `control` scope, within their tenants):
//! `GET /v1/connections`, `POST /v1/disconnect`, `POST /v1/revoke`, `POST /v1/rooms/leave`.
//! Every call is written to the audit log (key name, tenant, target, result) and counted.

use std::sync::Arc;

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::keys;
use crate::bus::BusError;
use crate::control::{self, Command};
use crate::events::{TenantId, UserId};
use crate::metrics;
use crate::state::AppState;
use crate::tenancy::Scope;

/// One control call, for the audit line and the counter.
struct Audit {
    action: &'static str,
    /// The key's name, also when the call was refused for its scope.
    key: Option<Arc<str>>,
    tenant: Option<TenantId>,
    user: Option<UserId>,
}

impl Audit {
    fn record(&self, result: &Result<(Value, usize), ApiError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.code,
        };
        ::metrics::counter!(metrics::CONTROL_REQUESTS, "action" => self.action, "result" => outcome)
            .increment(1);
        tracing::info!(
            target: "realtime_gateway::audit",
            action = self.action,
            key = self.key.as_deref().unwrap_or("-"),
            tenant = self.tenant.as_ref().map_or("-", |t| t.as_str()),
            user = self.user.as_ref().map_or("-", |u| u.as_str()),
            result = outcome,
            count = result.as_ref().ok().map(|(_, n)| *n),
            "control call"
        );
    }
}

/// `institutionId` and `userId` of a control request (body or query).
fn target(obj: &Map<String, Value>) -> Result<(TenantId, UserId), ApiError> {
    let get = |field: &str| {
        obj.get(field).filter(|v| !v.is_null()).ok_or_else(|| {
            ApiError::invalid("missing_field", field, format!("{field} is required"))
        })
    };
    let tenant = TenantId::from_json(get("institutionId")?)
        .map_err(|e| ApiError::invalid("invalid_field", "institutionId", e.0))?;
    let user = UserId::from_json(get("userId")?)
        .map_err(|e| ApiError::invalid("invalid_field", "userId", e.0))?;
    Ok((tenant, user))
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// Sends `command` for `user`'s sockets to every gateway and adds up how many they acted on.
async fn acted_on(
    st: &AppState,
    tenant: &TenantId,
    user: &UserId,
    command: Command,
) -> Result<usize, ApiError> {
    let (answers, _) = control::request(st, tenant, user, command)
        .await
        .map_err(bus_error)?;
    Ok(answers.iter().map(|a| a.count).sum())
}

fn bus_error(e: BusError) -> ApiError {
    tracing::warn!(error = %e, "control request failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "bus_unavailable",
        "the control channel (Redis) is unavailable; nothing was done; retry later",
    )
}

/// One control request as its handler receives it: the key's headers and the fields (a GET's
/// query, a POST's JSON body object), with the gateway it reached.
pub struct ControlRequest {
    state: Arc<AppState>,
    headers: HeaderMap,
    fields: Result<Map<String, Value>, ApiError>,
}

impl FromRequest<Arc<AppState>> for ControlRequest {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let fields = if req.method() == Method::POST {
            let body = Bytes::from_request(req, state)
                .await
                .map_err(IntoResponse::into_response)?;
            body_object(&body)
        } else {
            let Query(query) = Query::<HashMap<String, String>>::try_from_uri(req.uri())
                .map_err(IntoResponse::into_response)?;
            Ok(query
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect())
        };
        Ok(ControlRequest {
            state: state.clone(),
            headers,
            fields,
        })
    }
}

impl ControlRequest {
    /// Runs the call: key and scope, fields, tenant, then `act`; audits whatever happens.
    async fn run(
        self,
        action: &'static str,
        act: impl AsyncFnOnce(
            &AppState,
            TenantId,
            UserId,
            Map<String, Value>,
        ) -> Result<(Value, usize), ApiError>,
    ) -> Result<Json<Value>, ApiError> {
        let state = &*self.state;
        let mut audit = Audit {
            action,
            key: keys::key_name(state, &self.headers),
            tenant: None,
            user: None,
        };
        let result = async {
            let caller = keys::caller(state, &self.headers, Scope::Control)?;
            audit.key = Some(caller.name.clone());
            let obj = self.fields?;
            let (tenant, user) = target(&obj)?;
            audit.tenant = Some(tenant.clone());
            audit.user = Some(user.clone());
            keys::require_tenant(&caller, &tenant, "institutionId")?;
            act(state, tenant, user, obj).await
        }
        .await;
        audit.record(&result);
        result.map(|(body, _)| Json(body))
    }
}

/// `GET /v1/connections?institutionId=&userId=`: the user's sockets on every gateway.
pub async fn connections(call: ControlRequest) -> Result<Json<Value>, ApiError> {
    call.run("list", async |state, tenant, user, _| {
        let (answers, _) = control::request(state, &tenant, &user, Command::List)
            .await
            .map_err(bus_error)?;
        let connections: Vec<_> = answers.into_iter().flat_map(|a| a.connections).collect();
        let n = connections.len();
        Ok((json!({ "connections": connections }), n))
    })
    .await
}

/// `POST /v1/disconnect { institutionId, userId, reason? }` → `{ disconnected }`.
pub async fn disconnect(call: ControlRequest) -> Result<Json<Value>, ApiError> {
    call.run("disconnect", async |state, tenant, user, obj| {
        let reason = match obj.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 200 => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    "invalid_field",
                    "reason",
                    "reason must be a string of at most 200 characters",
                ))
            }
        };
        let n = acted_on(state, &tenant, &user, Command::Disconnect { reason }).await?;
        Ok((json!({ "disconnected": n }), n))
    })
    .await
}

/// `POST /v1/revoke { institutionId, userId, before? }` → `{ revoked, before, disconnected }`.
/// The revocation is stored first (so it survives restarts and reaches gateways that start
/// later), then every gateway applies it to the sockets it holds.
pub async fn revoke(call: ControlRequest) -> Result<Json<Value>, ApiError> {
    call.run("revoke", async |state, tenant, user, obj| {
        let now = control::now_secs();
        let before = match obj.get("before") {
            None | Some(Value::Null) => now,
            Some(v) => v.as_u64().filter(|b| *b <= now + 60).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_field",
                    "before",
                    "before must be seconds since the epoch, not in the future (default: now)",
                )
            })?,
        };
        let ttl = state.tenancy.revocation_ttl;
        let before = match &state.tenancy.fleet {
            Some(fleet) => fleet
                .revoke(&tenant, &user, before, ttl)
                .await
                .map_err(bus_error)?,
            None => before,
        };
        let ttl = ttl.as_secs().max(1);
        let n = acted_on(state, &tenant, &user, Command::Revoke { before, ttl }).await?;
        Ok((
            json!({ "revoked": true, "before": before, "disconnected": n }),
            n,
        ))
    })
    .await
}

/// `POST /v1/rooms/leave { institutionId, userId, room }` → `{ left }`.
pub async fn leave_room(call: ControlRequest) -> Result<Json<Value>, ApiError> {
    call.run("leave", async |state, tenant, user, obj| {
        let name = obj.get("room").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                "missing_field",
                "room",
                "room is required, e.g. \"batch:456\"",
            )
        })?;
        let policy = &state.config.policy;
        let room = policy
            .parse_room(name)
            .and_then(|r| policy.check_leave(&r).map(|()| r))
            .map_err(|e| ApiError::invalid(e.code, "room", e.message))?;
        let room = room.to_string();
        let n = acted_on(state, &tenant, &user, Command::Leave { room }).await?;
        Ok((json!({ "left": n }), n))
    })
    .await
}
