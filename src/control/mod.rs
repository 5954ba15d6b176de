//! The control plane: list a user's connections, disconnect them, revoke their tokens, make
//! them leave a room, on every gateway of the fleet.
//!
//! A request is published on the Redis control channel; every gateway applies it to the
//! sockets it holds and pushes its answer to a list the requester reads (the `PUBLISH` reply
//! says how many gateways to wait for, and the requester waits at most [`DEADLINE`]). On the
//! embedded bus the request is applied locally. The HTTP side is in `http::control`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bus::BusError;
use crate::events::envelope::now_millis;
use crate::events::{TenantId, UserId};
use crate::metrics;
use crate::peer::Peer;
use crate::socket::{self, names};
use crate::state::AppState;

/// How long a request waits for every gateway's answer.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// What a control request asks every gateway to do to one user's sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Describe them.
    List,
    /// Disconnect them (`auth_error session_revoked`, then a server-side disconnect).
    Disconnect {
        /// Shown to the client in the `auth_error` message.
        reason: Option<String>,
    },
    /// Refuse the user's tokens issued before `before` and disconnect sockets holding one.
    Revoke {
        /// Seconds since the epoch.
        before: u64,
        /// How long the revocation lasts, in seconds.
        ttl: u64,
    },
    /// Make them leave `room` (they get `left { room, reason }`).
    Leave {
        /// Client-facing room name.
        room: String,
    },
}

/// A command for one user's sockets, as it travels on the control channel.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: String,
    tenant: String,
    user: String,
    #[serde(flatten)]
    command: Command,
}

/// One socket, as `GET /v1/connections` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The gateway that holds it.
    pub gateway: String,
    /// Socket id (the Engine.IO session id).
    pub socket_id: String,
    /// `websocket` or `polling`.
    pub transport: String,
    /// Every room it is in (automatic ones included).
    pub rooms: Vec<String>,
    /// When it connected, ms since the epoch.
    pub connected_at: i64,
    /// When its token expires, ms since the epoch.
    pub expires_at: u64,
}

/// One gateway's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    /// Sockets acted on.
    pub count: usize,
    /// For `List`: the sockets.
    pub connections: Vec<Connection>,
}

/// The user's sockets on this gateway.
fn sockets_of(st: &AppState, tenant: &TenantId, user: &UserId) -> Vec<Peer> {
    st.peers
        .all()
        .into_iter()
        .filter(|p| {
            p.session()
                .identity()
                .is_some_and(|i| i.tenant == *tenant && i.user_id == *user)
        })
        .collect()
}

/// Applies `command` to `user`'s sockets on this gateway.
fn apply(st: &AppState, tenant: &TenantId, user: &UserId, command: &Command) -> Answer {
    let peers = sockets_of(st, tenant, user);
    let mut answer = Answer::default();
    match command {
        Command::List => {
            for p in &peers {
                let session = p.session();
                let state = session.state();
                let Some(auth) = state.auth() else { continue };
                let rooms = auth.keys().iter().map(|k| k.room().to_string()).collect();
                answer.connections.push(Connection {
                    gateway: st.tenancy.gateway.to_string(),
                    socket_id: p.sid(),
                    transport: p.transport().to_string(),
                    rooms,
                    connected_at: session.connected_at,
                    expires_at: auth.exp.saturating_mul(1000),
                });
            }
            answer.count = answer.connections.len();
        }
        Command::Disconnect { reason } => {
            let message = reason.clone().unwrap_or_else(|| {
                "this session was ended by an administrator; sign in again".into()
            });
            for p in &peers {
                socket::end_session(p, "session_revoked", &message, "session_revoked");
            }
            answer.count = peers.len();
        }
        Command::Revoke { before, ttl } => {
            st.tenancy.revocations.insert(
                tenant.clone(),
                user.clone(),
                *before,
                Duration::from_secs(*ttl),
            );
            for p in &peers {
                let issued = p.session().state().auth().map(|a| a.issued_at);
                // No iat/nbf: nothing shows the token is newer than the revocation.
                if issued.is_some_and(|at| at.is_none_or(|at| at < *before)) {
                    socket::end_session(
                        p,
                        "session_revoked",
                        "this session's token was revoked; sign in again",
                        "token_revoked",
                    );
                    answer.count += 1;
                }
            }
        }
        Command::Leave { room } => {
            let Ok(room) = st.config.policy.parse_room(room) else {
                return answer;
            };
            for p in &peers {
                if socket::force_leave(st, p, &room) {
                    p.emit(
                        names::LEFT,
                        &json!({ "room": room, "reason": "removed_by_administrator" }),
                    );
                    answer.count += 1;
                }
            }
        }
    }
    answer
}

/// Sends `command` for `user`'s sockets to every gateway (or applies it here on the embedded
/// bus) and gathers the answers that arrive within [`DEADLINE`]. Returns the answers and how
/// many gateways were asked.
pub async fn request(
    st: &AppState,
    tenant: &TenantId,
    user: &UserId,
    command: Command,
) -> Result<(Vec<Answer>, usize), BusError> {
    let Some(fleet) = &st.tenancy.fleet else {
        return Ok((vec![apply(st, tenant, user, &command)], 1));
    };
    let id = ulid::Ulid::new().to_string();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let message = serde_json::to_string(&Request {
        id: id.clone(),
        tenant: tenant.to_string(),
        user: user.to_string(),
        command,
    })
    .map_err(|e| BusError::Rejected(e.to_string()))?;
    let asked = fleet.publish_control(&message).await?;
    let raw = fleet.collect(&id, asked, deadline).await?;
    let answers = raw
        .iter()
        .filter_map(|a| serde_json::from_str::<Answer>(a).ok())
        .collect::<Vec<_>>();
    if answers.len() < asked {
        tracing::warn!(
            asked,
            answered = answers.len(),
            "control request: not every gateway answered in time"
        );
    }
    Ok((answers, asked))
}

/// Follows the Redis control channel until `shutdown`: applies each request and answers it.
/// After every (re)connect the stored revocations are read again, so one published while this
/// gateway was cut off still applies.
pub async fn run(st: Arc<AppState>, shutdown: CancellationToken) {
    let Some(fleet) = st.tenancy.fleet.clone() else {
        return;
    };
    let client = match redis::Client::open(fleet.url()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "control channel disabled: bad Redis URL");
            return;
        }
    };
    let channel = fleet.control_channel();
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            pubsub
                .subscribe(&channel)
                .await
                .map_err(|e| e.to_string())?;
            let n = st
                .tenancy
                .load_revocations()
                .await
                .map_err(|e| format!("stored revocations not read: {e}"))?;
            st.tenancy.set_control_ready(true);
            tracing::info!(revocations = n, "control channel ready");
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let request: Request = match serde_json::from_slice(msg.get_payload_bytes()) {
                    Ok(r) => r,
                    Err(e) => {
                        ::metrics::counter!(metrics::BUS_INVALID, "reason" => "bad_control")
                            .increment(1);
                        tracing::warn!(error = %e, "invalid control message; dropped");
                        continue;
                    }
                };
                let ids = TenantId::parse(&request.tenant)
                    .and_then(|t| Ok((t, UserId::parse(&request.user)?)));
                let answer = match ids {
                    Ok((tenant, user)) => apply(&st, &tenant, &user, &request.command),
                    Err(_) => Answer::default(),
                };
                let body = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into());
                if let Err(e) = fleet.reply(&request.id, &body).await {
                    tracing::warn!(error = %e, "control answer not stored");
                }
            }
            Err::<(), String>("control channel closed".into())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => {
                if st.tenancy.control_ready() {
                    // It was up: retry quickly, as after the first failure.
                    backoff = Duration::from_millis(100);
                }
                st.tenancy.set_control_ready(false);
                if let Err(e) = r {
                    tracing::warn!(error = %e, "control channel lost; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    (now_millis() / 1000) as u64
}
