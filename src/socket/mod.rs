//! The Socket.IO side: the connect middleware (token in the handshake), the seed's
//! `authenticate` flow, `join` / `leave` under the room policy, `refresh`, `ping`, timers, and
//! cleanup on disconnect.
//!
//! Event handlers are installed in the middleware, before the client is told it is connected,
//! so an event the client emits right after `connect` is never missed.

pub mod deadlines;
mod handlers;
pub mod membership;
pub mod rooms;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SocketIo, TransportType};

use crate::auth::{AuthError, Verified};
use crate::events::envelope::now_millis;
use crate::events::{RoomKey, RoomName};
use crate::metrics;
use crate::state::AppState;
use deadlines::Deadline;
use session::Session;

/// Event names of the client protocol, spelled once.
pub mod names {
    /// Client → server: authenticate after connecting without a token.
    pub const AUTHENTICATE: &str = "authenticate";
    /// Server → client: authentication succeeded.
    pub const AUTHENTICATED: &str = "authenticated";
    /// Server → client: authentication failed or lapsed (`{ code, message }`).
    pub const AUTH_ERROR: &str = "auth_error";
    /// Client → server: join a room.
    pub const JOIN: &str = "join";
    /// Client → server: leave a room.
    pub const LEAVE: &str = "leave";
    /// Client → server: extend the session with a newer token.
    pub const REFRESH: &str = "refresh";
    /// Client → server: liveness check.
    pub const PING: &str = "ping";
    /// Server → client: answer to `ping`.
    pub const PONG: &str = "pong";
}

/// The refusal a client sees in `connect_error`: its message is the stable code.
#[derive(Debug)]
pub struct ConnectRefused(&'static str);

impl std::fmt::Display for ConnectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// `{ ok: false, error: { code, message } }`.
fn error_reply(code: &str, message: &str) -> Value {
    json!({ "ok": false, "error": { "code": code, "message": message } })
}

fn auth_failed(e: &AuthError) -> Value {
    ::metrics::counter!(metrics::AUTH_FAILURES, "reason" => e.code()).increment(1);
    error_reply(e.code(), &e.to_string())
}

/// Sends an ack if the client asked for one. A failure means the socket is gone or full, which
/// the disconnect and delivery metrics already account for.
fn reply(ack: AckSender, body: &Value) {
    if let Err(e) = ack.send(body) {
        tracing::debug!(error = %e, "ack not sent");
    }
}

fn emit(s: &SocketRef, event: &str, data: &impl Serialize) {
    if let Err(e) = s.emit(event, data) {
        let reason = match e {
            socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull) => {
                "buffer_full"
            }
            socketioxide::SendError::Socket(socketioxide::SocketError::Closed) => "closed",
            socketioxide::SendError::Serialize(_) => "encode",
        };
        ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => reason).increment(1);
        tracing::debug!(sid = %s.id, event, error = %e, "emit failed");
    }
}

fn session_of(s: &SocketRef) -> Option<Arc<Session>> {
    s.extensions.get::<Arc<Session>>()
}

fn token_of(payload: &Option<Value>) -> Result<Option<String>, AuthError> {
    match payload.as_ref().and_then(|v| v.get("token")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(AuthError::Malformed),
    }
}

/// Time left until `exp` (seconds since the epoch), to the millisecond.
fn until(exp: u64) -> Duration {
    let exp_ms = exp.saturating_mul(1000) as i64;
    Duration::from_millis((exp_ms - now_millis()).max(0) as u64)
}

/// Registers the gateway's handlers on the `/` namespace.
pub fn register(io: &SocketIo, state: Arc<AppState>) {
    let st = state.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let st = st.clone();
        async move { authenticate_handshake(st, &s, auth.ok()) }
    };
    let st = state;
    let on_connect = move |s: SocketRef| {
        let st = st.clone();
        async move { on_connect(st, s).await }
    };
    io.ns("/", on_connect.with(middleware));
}

/// Connect middleware: a token in `auth` must verify; no token lets the socket in
/// unauthenticated. Installs the event handlers before the client hears it is connected.
fn authenticate_handshake(
    st: Arc<AppState>,
    s: &SocketRef,
    auth: Option<Value>,
) -> Result<(), ConnectRefused> {
    let transport = match s.transport_type() {
        TransportType::Websocket => "websocket",
        TransportType::Polling => "polling",
    };
    let session = Session::new(transport);
    let refuse = |e: AuthError| {
        auth_failed(&e);
        ConnectRefused(e.code())
    };
    if let Some(token) = token_of(&auth).map_err(refuse)? {
        let verified = st.config.verifier.verify(&token).map_err(refuse)?;
        let mut state = session.state();
        state.identity = Some(verified.identity);
        state.exp = verified.exp;
        state.from_handshake = true;
        state.handshake_since = auth.as_ref().and_then(|a| a.get("since")).cloned();
    }
    s.extensions.insert(session.clone());
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => transport).increment(1.0);
    ::metrics::counter!(metrics::CONNECTIONS_TOTAL, "transport" => transport).increment(1);
    {
        let st = st.clone();
        s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| async move {
            on_disconnect(&st, &s, &session, reason)
        });
    }
    handlers::install(st, s);
    Ok(())
}

async fn on_connect(st: Arc<AppState>, s: SocketRef) {
    let Some(session) = session_of(&s) else {
        return;
    };
    // Only a handshake identity is completed here: an `authenticate` event that raced ahead of
    // this handler completes its own (with its ack).
    let (verified, authenticated) = {
        let state = session.state();
        let verified = state
            .identity
            .clone()
            .filter(|_| state.from_handshake)
            .map(|identity| Verified {
                identity,
                exp: state.exp,
            });
        (verified, state.identity.is_some())
    };
    match verified {
        Some(v) => complete_auth(&st, &s, &session, v, None).await,
        None if authenticated => {}
        None => st.deadlines.schedule(
            Instant::now() + st.config.auth_grace,
            s.id,
            Deadline::AuthGrace,
        ),
    }
}

/// The identity is claimed: enter the automatic rooms (recovering from `auth.since` when given),
/// arm the expiry timer, then tell the client (ack and `authenticated`).
async fn complete_auth(
    st: &AppState,
    s: &SocketRef,
    session: &Session,
    verified: Verified,
    ack: Option<AckSender>,
) {
    let id = &verified.identity;
    let keys: Vec<RoomKey> = [
        RoomName::institution(&id.tenant),
        RoomName::user(&id.user_id),
    ]
    .into_iter()
    .map(|r| RoomKey::new(id.tenant.clone(), r))
    .collect();
    let since = {
        let mut state = session.state();
        if state.closed || state.auto_entered {
            return;
        }
        state.auto_entered = true;
        for key in &keys {
            st.membership.add(key);
        }
        state.handshake_since.take()
    };
    schedule_expiry(st, s, verified.exp);
    let entries = keys.iter().map(|key| {
        let wanted = since
            .as_ref()
            .and_then(|m| m.get(key.room().as_str()))
            .map(rooms::parse_since);
        rooms::enter(st, s, key, wanted)
    });
    let entries = futures_util::future::join_all(entries).await;
    let msg = json!({
        "userId": id.user_id,
        "institutionId": id.tenant,
        "role": id.role,
        "rooms": entries,
        "exp": verified.exp,
    });
    if let Some(ack) = ack {
        let mut body = msg.clone();
        body["ok"] = json!(true);
        reply(ack, &body);
    }
    emit(s, names::AUTHENTICATED, &msg);
}

fn schedule_expiry(st: &AppState, s: &SocketRef, exp: u64) {
    st.deadlines
        .schedule(Instant::now() + until(exp), s.id, Deadline::TokenExpiry);
}

fn on_disconnect(st: &AppState, s: &SocketRef, session: &Session, reason: DisconnectReason) {
    let (identity, rooms) = {
        let mut state = session.state();
        state.closed = true;
        (state.identity.take(), std::mem::take(&mut state.rooms))
    };
    if let Some(id) = identity {
        let auto = [
            RoomName::institution(&id.tenant),
            RoomName::user(&id.user_id),
        ];
        for room in auto.into_iter().chain(rooms) {
            st.membership.remove(&RoomKey::new(id.tenant.clone(), room));
        }
    }
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => session.transport).decrement(1.0);
    ::metrics::counter!(metrics::DISCONNECTS, "reason" => disconnect_label(reason)).increment(1);
    tracing::debug!(sid = %s.id, %reason, "socket disconnected");
}

fn disconnect_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "bad_packet",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "server_closing",
    }
}

/// Handles a due deadline: disconnects a socket that did not authenticate in time, or whose
/// token expired without a refresh. Stale deadlines (socket gone, token refreshed) do nothing.
pub fn on_deadline(io: &SocketIo, sid: socketioxide::socket::Sid, what: Deadline) {
    let Some(s) = io.get_socket(sid) else { return };
    let Some(session) = session_of(&s) else {
        return;
    };
    let (code, message) = {
        let state = session.state();
        match what {
            Deadline::AuthGrace if state.identity.is_none() => (
                "auth_timeout",
                "no authenticate event within the grace period; connect with auth: { token }",
            ),
            Deadline::TokenExpiry if state.identity.is_some() && until(state.exp).is_zero() => (
                "token_expired",
                "the token expired; emit refresh { token } before exp to stay connected",
            ),
            _ => return,
        }
    };
    ::metrics::counter!(metrics::AUTH_FAILURES, "reason" => code).increment(1);
    emit(
        &s,
        names::AUTH_ERROR,
        &json!({ "code": code, "message": message }),
    );
    if let Err(e) = s.disconnect() {
        tracing::debug!(%sid, error = %e, "disconnect after deadline failed");
    }
}
