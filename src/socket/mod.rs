//! The Socket.IO side: the connect middleware (token in the handshake), the seed's
//! `authenticate` flow, `join` / `leave` under the room policy, `refresh`, `presence`, `ping`,
//! timers, and
//! cleanup on disconnect.
//!
//! Event handlers are installed in the middleware, before the client is told it is connected,
//! so an event the client emits right after `connect` is never missed.

mod handlers;
mod presence;
pub mod rooms;
mod ws;

pub use ws::Transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::{AuthError, Verified};
use crate::events::envelope::now_millis;
use crate::events::{RoomKey, RoomName, TenantId};
use crate::metrics;
use crate::peer::deadlines::Deadline;
use crate::peer::session::{Auth, Phase, Session};
use crate::peer::{Ack, Peer, PeerId};
use crate::state::AppState;

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
    /// Server → client: the socket was made to leave a room (`{ room, reason }`).
    pub const LEFT: &str = "left";
}

/// Connect refusal of a socket whose tenant holds its connection quota.
pub const TENANT_CONNECTION_LIMIT: &str = "tenant_connection_limit";

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

/// The Socket.IO connect packet of a new socket, before the client hears it is connected: a
/// token in `auth` must verify, not be revoked, and its tenant must be under its connection
/// quota (fleet-wide), and the socket is then in its automatic rooms (recovering from
/// `auth.since` when given), so every event published after the client sees `connect` reaches
/// it. No token lets the socket in unauthenticated (it has the grace period to
/// `authenticate`). `Ok` holds the prepared room entries for [`on_connect`]; `Err` is the code
/// the client gets in `connect_error`.
pub async fn handshake(
    st: &AppState,
    peer: &Peer,
    auth: Option<Value>,
) -> Result<Vec<rooms::Prepared>, &'static str> {
    let session = peer.session();
    let refuse = |e: AuthError| {
        auth_failed(&e);
        e.code()
    };
    let verified = token_of(&auth)
        .and_then(|token| token.map(|t| verify_token(st, &t)).transpose())
        .map_err(refuse)?;
    if let Some(verified) = &verified {
        admit(st, session, &verified.identity.tenant).await?;
    }
    let transport = session.transport;
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => transport).increment(1.0);
    ::metrics::counter!(metrics::CONNECTIONS_TOTAL, "transport" => transport).increment(1);
    let Some(verified) = verified else {
        return Ok(Vec::new());
    };
    let since = auth.as_ref().and_then(|a| a.get("since"));
    let Some(keys) = claim(st, session, verified) else {
        st.tenancy.release(session.id);
        return Err("closed");
    };
    Ok(prepare_auto(st, peer, keys, since).await)
}

/// Verifies a token and refuses a revoked one.
fn verify_token(st: &AppState, token: &str) -> Result<Verified, AuthError> {
    let verified = st.config.verifier.verify(token)?;
    st.tenancy.check_token(&verified)?;
    Ok(verified)
}

/// Counts the socket against its tenant's fleet-wide connection quota; `Err` is the refusal.
async fn admit(st: &AppState, session: &Session, tenant: &TenantId) -> Result<(), &'static str> {
    match st.tenancy.admit(session.id, tenant).await {
        crate::tenancy::Admission::Admitted => Ok(()),
        crate::tenancy::Admission::Refused => {
            ::metrics::counter!(metrics::AUTH_FAILURES, "reason" => TENANT_CONNECTION_LIMIT)
                .increment(1);
            Err(TENANT_CONNECTION_LIMIT)
        }
    }
}

/// Ends a session from the server side: `auth_error { code, message }`, then the transport's
/// Socket.IO disconnect, after which the stock client stays offline until the application
/// reconnects. `reason` labels the failure metric.
pub fn end_session(peer: &Peer, code: &str, message: &str, reason: &'static str) {
    ::metrics::counter!(metrics::AUTH_FAILURES, "reason" => reason).increment(1);
    peer.emit(
        names::AUTH_ERROR,
        &json!({ "code": code, "message": message }),
    );
    peer.disconnect();
}

/// Takes `room` (a room joined on request) out of the socket's rooms, its relay membership
/// with it; false if the socket was not in it.
pub fn force_leave(st: &AppState, peer: &Peer, room: &RoomName) -> bool {
    let session = peer.session();
    let mut state = session.state();
    let Some(auth) = state.auth_mut() else {
        return false;
    };
    let Some(pos) = auth.rooms.iter().position(|r| r == room) else {
        return false;
    };
    auth.rooms.swap_remove(pos);
    let key = auth.key(room.clone());
    st.relay.leave(&key, session.socket(&auth.identity));
    true
}

/// Makes the socket authenticated as `verified` and counts it in its automatic rooms; `None`
/// if it already is authenticated or is closing. Under the session's lock, so two racing
/// authentications cannot both win and a request that follows sees the identity.
fn claim(st: &AppState, session: &Session, verified: Verified) -> Option<Vec<RoomKey>> {
    let mut state = session.state();
    if !matches!(state.phase, Phase::AwaitingAuth) {
        return None;
    }
    let auth = Auth {
        identity: verified.identity,
        exp: verified.exp,
        issued_at: verified.issued_at,
        rooms: Vec::new(),
    };
    let keys = auth.keys();
    // Exactly once per socket: only the claim that moves the session out of awaiting auth gets
    // here, and only a session that got here is taken out of these rooms on disconnect.
    let who = session.socket(&auth.identity);
    st.lifecycle.authenticated(who);
    for key in &keys {
        st.relay.add(key, who);
    }
    state.phase = Phase::Authenticated(auth);
    Some(keys)
}

/// Prepares the entries of the automatic rooms `keys`, each from its position in `since`
/// (`{ room: { epoch, offset } }`) when the client sent one.
async fn prepare_auto(
    st: &AppState,
    peer: &Peer,
    keys: Vec<RoomKey>,
    since: Option<&Value>,
) -> Vec<rooms::Prepared> {
    let entries = keys.iter().map(|key| {
        let wanted = since
            .and_then(|m| m.get(key.room().as_str()))
            .map(rooms::parse_since);
        rooms::prepare(st, peer, key, wanted)
    });
    futures_util::future::join_all(entries).await
}

/// After the client was told it is connected: completes a handshake identity (sending what its
/// rooms owe it and `authenticated`), or starts the grace period for `authenticate`.
pub async fn on_connect(st: Arc<AppState>, peer: Peer, entries: Vec<rooms::Prepared>) {
    let session = peer.session();
    if !entries.is_empty() {
        return complete_auth(&st, &peer, session, entries, None).await;
    }
    if matches!(session.state().phase, Phase::AwaitingAuth) {
        st.deadlines.schedule(
            Instant::now() + st.config.auth_grace,
            session.id,
            Deadline::AuthGrace,
        );
    }
}

/// The automatic rooms are prepared: finish entering them, arm the expiry timer, then tell the
/// client (ack and `authenticated`).
async fn complete_auth(
    st: &AppState,
    peer: &Peer,
    session: &Session,
    entries: Vec<rooms::Prepared>,
    ack: Option<Ack>,
) {
    let entries = entries.into_iter().map(|p| rooms::finish(st, peer, p));
    let entries = futures_util::future::join_all(entries).await;
    let Some((identity, exp)) = session.state().auth().map(|a| (a.identity.clone(), a.exp)) else {
        return;
    };
    schedule_expiry(st, session.id, exp);
    let msg = json!({
        "userId": identity.user_id,
        "institutionId": identity.tenant,
        "role": identity.role,
        "rooms": entries,
        "exp": exp,
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
    let session = peer.session();
    let phase = std::mem::replace(&mut session.state().phase, Phase::Closed);
    match phase {
        // Only an authenticated session was counted in rooms (its automatic ones from the claim
        // on), so only it leaves them and ends its lifecycle.
        Phase::Authenticated(auth) => {
            let who = session.socket(&auth.identity);
            st.relay.gone(session.id, Some(who), auth.keys());
            st.lifecycle.disconnected(who, reason);
        }
        _ => st.relay.gone(session.id, None, Vec::new()),
    }
    st.tenancy.release(session.id);
    ::metrics::gauge!(metrics::CONNECTIONS, "transport" => session.transport).decrement(1.0);
    ::metrics::counter!(metrics::DISCONNECTS, "reason" => reason).increment(1);
    tracing::debug!(peer = session.id, reason, "socket disconnected");
}

/// Handles a due deadline: disconnects a socket that did not authenticate in time, or whose
/// token expired without a refresh. Stale deadlines (socket gone, token refreshed) do nothing.
pub fn on_deadline(st: &AppState, id: PeerId, what: Deadline) {
    let Some(peer) = st.peers.get(id) else { return };
    let session = peer.session();
    let (code, message) = {
        let state = session.state();
        match (what, &state.phase) {
            (Deadline::AuthGrace, Phase::AwaitingAuth) => (
                "auth_timeout",
                "no authenticate event within the grace period; connect with auth: { token }",
            ),
            (Deadline::TokenExpiry, Phase::Authenticated(a)) if until(a.exp).is_zero() => (
                "token_expired",
                "the token expired; emit refresh { token } before exp to stay connected",
            ),
            _ => return,
        }
    };
    end_session(&peer, code, message, code);
}
