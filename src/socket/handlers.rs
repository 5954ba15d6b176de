//! Handlers of the client's events: `authenticate`, `join`, `leave`, `refresh`, `ping`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{
    auth_failed, claim, complete_auth, error_reply, names, prepare_auto, reply, rooms,
    schedule_expiry, token_of,
};
use crate::auth::{AuthError, RoomError};
use crate::events::envelope::now_millis;
use crate::events::{RoomKey, RoomName};
use crate::metrics;
use crate::peer::session::Session;
use crate::peer::{Ack, Peer};
use crate::state::AppState;

/// Runs the handler of a client event. Events that wait on the bus run in their own task; the
/// others are answered at once. An unknown event is answered (when it asks for an ack) with
/// `unknown_event`, and counted.
pub(super) fn dispatch(
    st: Arc<AppState>,
    peer: Peer,
    name: String,
    data: Option<Value>,
    mut ack: Option<Ack>,
) {
    match name.as_str() {
        // What a request changes in the session happens here, in the order the client sent
        // its requests (a `leave` right after a `join` finds the room joined); only the part
        // that waits on the bus runs in a task of its own.
        names::AUTHENTICATE => {
            if let Some((session, keys)) = authenticate(&st, &peer, &data, &mut ack) {
                tokio::spawn(async move {
                    let since = data.as_ref().and_then(|d| d.get("since"));
                    let entries = prepare_auto(&st, &peer, keys, since).await;
                    complete_auth(&st, &peer, &session, entries, ack).await;
                });
            }
        }
        names::JOIN => {
            let refused = |e: RoomError| {
                ::metrics::counter!(metrics::JOIN_REFUSED, "reason" => e.code).increment(1);
                error_reply(e.code, &e.message)
            };
            match join(&st, &peer, data) {
                Ok((key, since)) => {
                    tokio::spawn(async move {
                        let mut body = json!(rooms::enter(&st, &peer, &key, since).await);
                        body["ok"] = json!(true);
                        reply(ack, &body);
                    });
                }
                Err(e) => reply(ack, &refused(e)),
            }
        }
        names::LEAVE => {
            let body = match leave(&st, &peer, data) {
                Ok(room) => json!({ "ok": true, "room": room }),
                Err(e) => error_reply(e.code, &e.message),
            };
            reply(ack, &body);
        }
        names::REFRESH => {
            let body = match refresh(&st, &peer, data) {
                Ok((exp, left)) => json!({ "ok": true, "exp": exp, "left": left }),
                Err(e) => auth_failed(&e),
            };
            reply(ack, &body);
        }
        names::PRESENCE => match super::presence::room(&st, &peer, data) {
            Ok(key) => {
                tokio::spawn(async move {
                    reply(ack, &super::presence::answer(&st, &key).await);
                });
            }
            Err(e) => reply(ack, &error_reply(e.code, &e.message)),
        },
        names::PING => {
            let body = json!({ "timestamp": now_millis() });
            reply(ack, &body);
            peer.emit(names::PONG, &body);
        }
        _ => {
            ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => "unknown_event")
                .increment(1);
            tracing::debug!(peer = peer.id(), event = %name, "unknown event");
            let message = "events are authenticate, join, leave, refresh, presence and ping";
            reply(ack, &error_reply("unknown_event", message));
        }
    }
}

/// Verifies the token and claims the identity; what is left (entering the automatic rooms,
/// the answers) is returned for [`complete_auth`]. Failures are answered here.
fn authenticate(
    st: &AppState,
    peer: &Peer,
    data: &Option<Value>,
    ack: &mut Option<Ack>,
) -> Option<(Arc<Session>, Vec<RoomKey>)> {
    let session = peer.session().clone();
    let verified = token_of(data)
        .and_then(|t| t.ok_or(AuthError::Missing))
        .and_then(|t| st.config.verifier.verify(&t));
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            let body = auth_failed(&e);
            reply(ack.take(), &body);
            peer.emit(
                names::AUTH_ERROR,
                &json!({ "code": e.code(), "message": e.to_string() }),
            );
            return None;
        }
    };
    match claim(st, &session, verified) {
        Some(keys) => Some((session, keys)),
        None => {
            let body = error_reply(
                "already_authenticated",
                "this socket is already authenticated; use refresh to extend it",
            );
            reply(ack.take(), &body);
            None
        }
    }
}

/// Why a join or leave request could not even be read.
fn bad_request(message: &str) -> RoomError {
    RoomError::new("invalid_request", message)
}

/// The room and optional `since` of a join request: `"batch:1"` or `{ room, since? }`.
pub(super) fn requested_room(data: &Option<Value>) -> Result<(String, Option<&Value>), RoomError> {
    match data {
        Some(Value::String(s)) => Ok((s.clone(), None)),
        Some(Value::Object(o)) => match o.get("room") {
            Some(Value::String(s)) => Ok((s.clone(), o.get("since").filter(|v| !v.is_null()))),
            _ => Err(bad_request("room must be a string such as \"batch:456\"")),
        },
        _ => Err(bad_request(
            "send a room name (\"batch:456\") or { room: \"batch:456\", since? }",
        )),
    }
}

/// Checks a join against the policy and the rate, and records the room in the session (a room
/// it is in already passes as it is). Returns the room and the position to enter it from.
fn join(
    st: &AppState,
    peer: &Peer,
    data: Option<Value>,
) -> Result<(RoomKey, Option<rooms::Since>), RoomError> {
    let session = peer.session();
    let policy = &st.config.policy;
    let (name, since) = requested_room(&data)?;
    let room = policy.parse_room(&name)?;
    let since = since
        .map(|v| {
            rooms::parse_since(v).map_err(|code| {
                RoomError::new(
                    code,
                    "since must be { epoch: string, offset: non-negative integer }",
                )
            })
        })
        .transpose()?;
    let key = {
        let mut state = session.state();
        let auth = state.auth().ok_or_else(|| {
            RoomError::new("not_authenticated", "authenticate before joining rooms")
        })?;
        let key = auth.key(room.clone());
        if !auth.is_in(&room) {
            policy.check_join(&auth.identity, &room, auth.rooms.len())?;
            if !state.take_join(st.config.join_rate.get()) {
                return Err(RoomError::new(
                    "rate_limited",
                    format!(
                        "at most {} joins per second; try again shortly",
                        st.config.join_rate
                    ),
                ));
            }
            if let Some(auth) = state.auth_mut() {
                st.relay.add(&key, session.socket(&auth.identity));
                auth.rooms.push(room);
            }
        }
        key
    };
    Ok((key, since.map(Ok)))
}

fn leave(st: &AppState, peer: &Peer, data: Option<Value>) -> Result<RoomName, RoomError> {
    let session = peer.session();
    let policy = &st.config.policy;
    let (name, _) = requested_room(&data)?;
    let room = policy.parse_room(&name)?;
    policy.check_leave(&room)?;
    let mut state = session.state();
    let auth = state
        .auth_mut()
        .ok_or_else(|| RoomError::new("not_authenticated", "authenticate first"))?;
    if let Some(pos) = auth.rooms.iter().position(|r| *r == room) {
        auth.rooms.swap_remove(pos);
        let key = auth.key(room.clone());
        st.relay.leave(&key, session.socket(&auth.identity));
    }
    Ok(room)
}

/// Extends the session with a newer token of the same user and tenant. If the role changed,
/// rooms the new role may not join are left (and listed in the answer).
fn refresh(
    st: &AppState,
    peer: &Peer,
    data: Option<Value>,
) -> Result<(u64, Vec<RoomName>), AuthError> {
    let session = peer.session();
    if session.identity().is_none() {
        return Err(AuthError::NotAuthenticated);
    }
    let token = token_of(&data)?.ok_or(AuthError::Missing)?;
    let verified = st.config.verifier.verify(&token)?;
    let (exp, left) = {
        let mut state = session.state();
        let auth = state.auth_mut().ok_or(AuthError::NotAuthenticated)?;
        if auth.identity.user_id != verified.identity.user_id
            || auth.identity.tenant != verified.identity.tenant
        {
            return Err(AuthError::IdentityChanged);
        }
        auth.exp = auth.exp.max(verified.exp);
        let mut left = Vec::new();
        let policy = &st.config.policy;
        for room in std::mem::take(&mut auth.rooms) {
            if policy.check_join(&verified.identity, &room, 0).is_ok() {
                auth.rooms.push(room);
            } else {
                let key = auth.key(room.clone());
                st.relay.leave(&key, session.socket(&auth.identity));
                left.push(room);
            }
        }
        auth.identity = verified.identity;
        (auth.exp, left)
    };
    schedule_expiry(st, session.id, exp);
    Ok((exp, left))
}
