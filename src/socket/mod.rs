//! The Socket.IO side: connect middleware (token in the handshake), the seed's `authenticate`
//! flow, `join` / `leave` under the room policy, `refresh`, `ping`, and cleanup on disconnect.

pub mod deadlines;
pub mod membership;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SocketIo, TransportType};

use crate::auth::{AuthError, Identity, RoomError, Verified};
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
        let reason = if matches!(
            e,
            socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull)
        ) {
            "buffer_full"
        } else {
            "closed"
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

fn unix_now() -> u64 {
    (now_millis() / 1000).max(0) as u64
}

/// Registers the gateway's handlers on the `/` namespace.
pub fn register(io: &SocketIo, state: Arc<AppState>) {
    let st = state.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let st = st.clone();
        async move { authenticate_handshake(&st, &s, auth.ok()) }
    };
    let st = state;
    let on_connect = move |s: SocketRef| {
        let st = st.clone();
        async move { on_connect(st, s).await }
    };
    io.ns("/", on_connect.with(middleware));
}

/// Connect middleware: a token in `auth` must verify; no token lets the socket in unauthenticated.
fn authenticate_handshake(
    st: &AppState,
    s: &SocketRef,
    auth: Option<Value>,
) -> Result<(), ConnectRefused> {
    let transport = match s.transport_type() {
        TransportType::Websocket => "websocket",
        TransportType::Polling => "polling",
    };
    let session = Session::new(transport);
    let token = token_of(&auth).map_err(|e| {
        auth_failed(&e);
        ConnectRefused(e.code())
    })?;
    if let Some(token) = token {
        let verified = st.config.verifier.verify(&token).map_err(|e| {
            auth_failed(&e);
            ConnectRefused(e.code())
        })?;
        let mut state = session.state();
        state.identity = Some(verified.identity);
        state.exp = verified.exp;
    }
    s.extensions.insert(session);
    Ok(())
}

async fn on_connect(st: Arc<AppState>, s: SocketRef) {
    let Some(session) = session_of(&s) else {
        // The middleware always inserts a session; without one the socket cannot be served.
        tracing::error!(sid = %s.id, "socket without session");
        let _ = s.disconnect();
        return;
    };
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => session.transport).increment(1.0);
    ::metrics::counter!(metrics::CONNECTIONS_TOTAL, "transport" => session.transport).increment(1);

    {
        let st = st.clone();
        let session = session.clone();
        s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| async move {
            on_disconnect(&st, &s, &session, reason)
        });
    }
    let handlers = Handlers { st: st.clone() };
    handlers.install(&s);

    let identity = session.identity();
    match identity {
        Some(identity) => {
            let exp = session.state().exp;
            complete_auth(&st, &s, &session, Verified { identity, exp }, None).await;
        }
        None => st.deadlines.schedule(
            Instant::now() + st.config.auth_grace,
            s.id,
            Deadline::AuthGrace,
        ),
    }
}

/// How long a join waits for the bus to confirm the room's subscription before answering.
/// Past it the join still succeeds; deliveries start when the bus catches up.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// Waits (bounded) until the bus delivers `keys` to this gateway.
async fn await_subscriptions(st: &AppState, keys: &[RoomKey]) {
    let waits = keys
        .iter()
        .map(|k| st.bus.wait_subscribed(k, SUBSCRIBE_WAIT));
    for (key, ok) in keys.iter().zip(futures_util::future::join_all(waits).await) {
        if !ok {
            tracing::warn!(room = %key, "bus subscription not confirmed in time; answering anyway");
        }
    }
}

/// Identity is set: join the automatic rooms, arm the expiry timer, tell the client.
async fn complete_auth(
    st: &AppState,
    s: &SocketRef,
    session: &Session,
    verified: Verified,
    ack: Option<AckSender>,
) {
    let id = &verified.identity;
    let auto = [
        RoomName::institution(&id.tenant),
        RoomName::user(&id.user_id),
    ];
    let keys: Vec<RoomKey> = auto
        .iter()
        .map(|r| RoomKey::new(id.tenant.clone(), r.clone()))
        .collect();
    {
        let mut state = session.state();
        if state.closed {
            return;
        }
        state.identity = Some(verified.identity.clone());
        state.exp = verified.exp;
        for key in &keys {
            s.join(key.as_str().to_owned());
            st.membership.add(key);
        }
    }
    schedule_expiry(st, s, verified.exp);
    await_subscriptions(st, &keys).await;
    let msg = json!({
        "userId": id.user_id,
        "institutionId": id.tenant,
        "role": id.role,
        "rooms": auto,
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
    let left = Duration::from_secs(exp.saturating_sub(unix_now()));
    st.deadlines
        .schedule(Instant::now() + left, s.id, Deadline::TokenExpiry);
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
            Deadline::TokenExpiry if state.identity.is_some() && state.exp <= unix_now() => (
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

/// Why a join or leave request could not even be read.
fn bad_request(message: &str) -> RoomError {
    RoomError::new("invalid_request", message)
}

/// The `room` of a join or leave request: `"batch:1"` or `{ room: "batch:1" }`.
fn requested_room(data: &Option<Value>) -> Result<String, RoomError> {
    match data {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(o)) => match o.get("room") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(bad_request("room must be a string such as \"batch:456\"")),
        },
        _ => Err(bad_request(
            "send a room name (\"batch:456\") or { room: \"batch:456\" }",
        )),
    }
}

#[derive(Clone)]
struct Handlers {
    st: Arc<AppState>,
}

impl Handlers {
    fn install(&self, s: &SocketRef) {
        let h = self.clone();
        s.on(
            names::AUTHENTICATE,
            move |s: SocketRef, TryData(d): TryData<Value>, ack: AckSender| {
                let h = h.clone();
                async move { h.authenticate(&s, d.ok(), ack).await }
            },
        );
        let h = self.clone();
        s.on(
            names::JOIN,
            move |s: SocketRef, TryData(d): TryData<Value>, ack: AckSender| {
                let h = h.clone();
                async move {
                    let body = match h.join(&s, d.ok()) {
                        Ok((room, key)) => {
                            if let Some(key) = key {
                                await_subscriptions(&h.st, &[key]).await;
                            }
                            json!({ "ok": true, "room": room })
                        }
                        Err(e) => {
                            ::metrics::counter!(metrics::JOIN_REFUSED, "reason" => e.code)
                                .increment(1);
                            error_reply(e.code, &e.message)
                        }
                    };
                    reply(ack, &body);
                }
            },
        );
        let h = self.clone();
        s.on(
            names::LEAVE,
            move |s: SocketRef, TryData(d): TryData<Value>, ack: AckSender| {
                let h = h.clone();
                async move {
                    let body = match h.leave(&s, d.ok()) {
                        Ok(room) => json!({ "ok": true, "room": room }),
                        Err(e) => error_reply(e.code, &e.message),
                    };
                    reply(ack, &body);
                }
            },
        );
        let h = self.clone();
        s.on(
            names::REFRESH,
            move |s: SocketRef, TryData(d): TryData<Value>, ack: AckSender| {
                let h = h.clone();
                async move {
                    let body = match h.refresh(&s, d.ok()) {
                        Ok(exp) => json!({ "ok": true, "exp": exp }),
                        Err(e) => auth_failed(&e),
                    };
                    reply(ack, &body);
                }
            },
        );
        s.on(names::PING, |s: SocketRef, ack: AckSender| async move {
            let body = json!({ "timestamp": now_millis() });
            reply(ack, &body);
            emit(&s, names::PONG, &body);
        });
    }

    async fn authenticate(&self, s: &SocketRef, data: Option<Value>, ack: AckSender) {
        let Some(session) = session_of(s) else { return };
        if session.identity().is_some() {
            let e = error_reply(
                "already_authenticated",
                "this socket is already authenticated; use refresh to extend it",
            );
            return reply(ack, &e);
        }
        let verified = token_of(&data)
            .and_then(|t| t.ok_or(AuthError::Missing))
            .and_then(|t| self.st.config.verifier.verify(&t));
        match verified {
            Ok(v) => complete_auth(&self.st, s, &session, v, Some(ack)).await,
            Err(e) => {
                let body = auth_failed(&e);
                reply(ack, &body);
                emit(
                    s,
                    names::AUTH_ERROR,
                    &json!({ "code": e.code(), "message": e.to_string() }),
                );
            }
        }
    }

    /// Joins the requested room; returns it, and its key when it was newly joined.
    fn join(
        &self,
        s: &SocketRef,
        data: Option<Value>,
    ) -> Result<(RoomName, Option<RoomKey>), RoomError> {
        let session = session_of(s).ok_or_else(|| bad_request("socket is closing"))?;
        let policy = &self.st.config.policy;
        let room = policy.parse_room(&requested_room(&data)?)?;
        let mut state = session.state();
        let identity: &Identity = state.identity.as_ref().ok_or_else(|| {
            RoomError::new("not_authenticated", "authenticate before joining rooms")
        })?;
        let own_auto = room == RoomName::institution(&identity.tenant)
            || room == RoomName::user(&identity.user_id);
        if own_auto || state.rooms.contains(&room) {
            return Ok((room, None));
        }
        policy.check_join(identity, &room, state.rooms.len())?;
        let key = RoomKey::new(identity.tenant.clone(), room.clone());
        s.join(key.as_str().to_owned());
        self.st.membership.add(&key);
        state.rooms.push(room.clone());
        Ok((room, Some(key)))
    }

    fn leave(&self, s: &SocketRef, data: Option<Value>) -> Result<RoomName, RoomError> {
        let session = session_of(s).ok_or_else(|| bad_request("socket is closing"))?;
        let policy = &self.st.config.policy;
        let room = policy.parse_room(&requested_room(&data)?)?;
        policy.check_leave(&room)?;
        let mut state = session.state();
        let tenant = state
            .identity
            .as_ref()
            .map(|i| i.tenant.clone())
            .ok_or_else(|| RoomError::new("not_authenticated", "authenticate first"))?;
        if let Some(pos) = state.rooms.iter().position(|r| *r == room) {
            state.rooms.swap_remove(pos);
            let key = RoomKey::new(tenant, room.clone());
            s.leave(key.as_str().to_owned());
            self.st.membership.remove(&key);
        }
        Ok(room)
    }

    fn refresh(&self, s: &SocketRef, data: Option<Value>) -> Result<u64, AuthError> {
        let session = session_of(s).ok_or(AuthError::Missing)?;
        let token = token_of(&data)?.ok_or(AuthError::Missing)?;
        let verified = self.st.config.verifier.verify(&token)?;
        let exp = {
            let mut state = session.state();
            let current = state.identity.as_ref().ok_or(AuthError::Missing)?;
            if current.user_id != verified.identity.user_id
                || current.tenant != verified.identity.tenant
            {
                return Err(AuthError::IdentityChanged);
            }
            state.exp = state.exp.max(verified.exp);
            state.identity = Some(verified.identity);
            state.exp
        };
        schedule_expiry(&self.st, s, exp);
        Ok(exp)
    }
}
