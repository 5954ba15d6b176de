//! The Socket.IO side: the connect middleware (token in the handshake), the seed's
//! `authenticate` flow, `join` / `leave` under the room policy, `refresh`, `ping`, timers, and
//! cleanup on disconnect.
//!
//! Event handlers are installed in the middleware, before the client is told it is connected,
//! so an event the client emits right after `connect` is never missed.

pub mod deadlines;
mod handlers;
pub mod membership;
pub mod peer;
mod presence;
pub mod rooms;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SocketIo, TransportType};

use crate::auth::{AuthError, Verified};
use crate::events::envelope::now_millis;
use crate::events::{RoomKey, RoomName};
use crate::metrics;
use crate::state::AppState;
use deadlines::Deadline;
use membership::Exit;
use peer::{Ack, Peer, PeerId};
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
    /// Client → server: who is in a room.
    pub const PRESENCE: &str = "presence";
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
fn reply(ack: Option<Ack>, body: &Value) {
    if let Some(ack) = ack {
        ack.send(body);
    }
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

/// Registers the gateway's handlers on socketioxide's `/` namespace (long-polling sessions and
/// those that upgrade from it).
pub fn register(io: &SocketIo, state: Arc<AppState>) {
    let st = state.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let st = st.clone();
        async move { sio_handshake(st, &s, auth.ok()) }
    };
    let st = state;
    let connected = move |s: SocketRef| {
        let st = st.clone();
        async move { on_connect(st, Peer::Sio(s)).await }
    };
    io.ns("/", connected.with(middleware));
}

/// socketioxide's connect middleware: the handshake check, then the event handlers, installed
/// before the client hears it is connected.
fn sio_handshake(
    st: Arc<AppState>,
    s: &SocketRef,
    auth: Option<Value>,
) -> Result<(), ConnectRefused> {
    let transport = match s.transport_type() {
        TransportType::Websocket => "websocket",
        TransportType::Polling => "polling",
    };
    let session = Session::new(transport);
    handshake(&st, &session, auth).map_err(ConnectRefused)?;
    let id = session.id;
    s.extensions.insert(session);
    st.peers.insert(Peer::Sio(s.clone()));
    {
        let st = st.clone();
        s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| async move {
            st.peers.remove(id);
            on_disconnect(&st, &Peer::Sio(s), disconnect_label(reason))
        });
    }
    handlers::install(st, s);
    Ok(())
}

/// The Socket.IO connect packet of a new socket: a token in `auth` must verify; no token lets
/// the socket in unauthenticated (it has the grace period to `authenticate`). `Err` is the code
/// the client gets in `connect_error`.
pub fn handshake(
    st: &AppState,
    session: &Session,
    auth: Option<Value>,
) -> Result<(), &'static str> {
    let refuse = |e: AuthError| {
        auth_failed(&e);
        e.code()
    };
    if let Some(token) = token_of(&auth).map_err(refuse)? {
        let verified = st.config.verifier.verify(&token).map_err(refuse)?;
        let mut state = session.state();
        state.identity = Some(verified.identity);
        state.exp = verified.exp;
        state.from_handshake = true;
        state.handshake_since = auth.as_ref().and_then(|a| a.get("since")).cloned();
    }
    let transport = session.transport;
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => transport).increment(1.0);
    ::metrics::counter!(metrics::CONNECTIONS_TOTAL, "transport" => transport).increment(1);
    Ok(())
}

/// Runs a client event's handler (in its own task when it waits on the bus).
pub fn dispatch(
    st: Arc<AppState>,
    peer: Peer,
    name: String,
    data: Option<Value>,
    ack: Option<Ack>,
) {
    handlers::dispatch(st, peer, name, data, ack);
}

/// After the client was told it is connected: completes a handshake identity (entering its
/// rooms), or starts the grace period for `authenticate`.
pub async fn on_connect(st: Arc<AppState>, peer: Peer) {
    let Some(session) = peer.session() else {
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
        Some(v) => complete_auth(&st, &peer, &session, v, None).await,
        None if authenticated => {}
        None => st.deadlines.schedule(
            Instant::now() + st.config.auth_grace,
            session.id,
            Deadline::AuthGrace,
        ),
    }
}

/// The identity is claimed: enter the automatic rooms (recovering from `auth.since` when given),
/// arm the expiry timer, then tell the client (ack and `authenticated`).
async fn complete_auth(
    st: &AppState,
    peer: &Peer,
    session: &Session,
    verified: Verified,
    ack: Option<Ack>,
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
        let who = session.socket(id);
        st.lifecycle.authenticated(who);
        for key in &keys {
            st.membership.add(key, who);
        }
        state.handshake_since.take()
    };
    schedule_expiry(st, session.id, verified.exp);
    let entries = keys.iter().map(|key| {
        let wanted = since
            .as_ref()
            .and_then(|m| m.get(key.room().as_str()))
            .map(rooms::parse_since);
        rooms::enter(st, peer, key, wanted)
    });
    let entries = futures_util::future::join_all(entries).await;
    let msg = json!({
        "userId": id.user_id,
        "institutionId": id.tenant,
        "role": id.role,
        "rooms": entries,
        "exp": verified.exp,
    });
    if ack.is_some() {
        let mut body = msg.clone();
        body["ok"] = json!(true);
        reply(ack, &body);
    }
    peer.emit(names::AUTHENTICATED, &msg);
}

fn schedule_expiry(st: &AppState, id: PeerId, exp: u64) {
    st.deadlines
        .schedule(Instant::now() + until(exp), id, Deadline::TokenExpiry);
}

/// A connected socket is gone: leave its rooms (relay and bus subscriptions) and count it.
pub fn on_disconnect(st: &AppState, peer: &Peer, reason: &'static str) {
    let Some(session) = peer.session() else {
        return;
    };
    let (identity, rooms, auto_entered) = {
        let mut state = session.state();
        state.closed = true;
        (
            state.identity.take(),
            std::mem::take(&mut state.rooms),
            state.auto_entered,
        )
    };
    let mut keys = Vec::new();
    if let Some(id) = identity {
        let who = session.socket(&id);
        // The automatic rooms only if they were entered: an `authenticate` can claim the
        // identity and lose the race against the disconnect before entering them.
        let auto = [
            RoomName::institution(&id.tenant),
            RoomName::user(&id.user_id),
        ]
        .into_iter()
        .filter(|_| auto_entered);
        for room in auto.chain(rooms) {
            let key = RoomKey::new(id.tenant.clone(), room);
            st.membership.remove(&key, who, Exit::Disconnected);
            keys.push(key);
        }
        if auto_entered {
            st.lifecycle.disconnected(who, reason);
        }
    }
    st.relay.gone(session.id, keys);
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => session.transport).decrement(1.0);
    ::metrics::counter!(metrics::DISCONNECTS, "reason" => reason).increment(1);
    tracing::debug!(peer = session.id, reason, "socket disconnected");
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
pub fn on_deadline(st: &AppState, id: PeerId, what: Deadline) {
    let Some(peer) = st.peers.get(id) else { return };
    let Some(session) = peer.session() else {
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
    peer.emit(
        names::AUTH_ERROR,
        &json!({ "code": code, "message": message }),
    );
    peer.disconnect();
}
