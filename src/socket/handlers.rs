//! Handlers of the client's events: `authenticate`, `join`, `leave`, `refresh`, `ping`.

use std::sync::Arc;

use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, TryData};

use super::membership::Exit;
use super::peer::{Ack, Peer};
use super::{
    auth_failed, complete_auth, error_reply, names, reply, rooms, schedule_expiry, token_of,
};
use crate::auth::{AuthError, RoomError};
use crate::events::envelope::now_millis;
use crate::events::{RoomKey, RoomName};
use crate::metrics;
use crate::state::AppState;

/// Installs the event handlers on a socketioxide socket; each hands over to [`dispatch`].
pub(super) fn install(st: Arc<AppState>, s: &SocketRef) {
    for name in [
        names::AUTHENTICATE,
        names::JOIN,
        names::LEAVE,
        names::REFRESH,
        names::PING,
        names::PRESENCE,
    ] {
        let st = st.clone();
        s.on(
            name,
            move |s: SocketRef, TryData(d): TryData<Value>, ack: AckSender| {
                dispatch(
                    st.clone(),
                    Peer::Sio(s),
                    name.to_owned(),
                    d.ok(),
                    Some(Ack::Sio(ack)),
                );
                std::future::ready(())
            },
        );
    }
}

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
            if let Some((session, verified)) = authenticate(&st, &peer, data, &mut ack) {
                tokio::spawn(async move {
                    complete_auth(&st, &peer, &session, verified, ack).await;
                });
            }
        }
        names::JOIN => {
            let refused = |e: RoomError| {
                ::metrics::counter!(metrics::JOIN_REFUSED, "reason" => e.code).increment(1);
                error_reply(e.code, &e.message)
            };
            match join(&st, &peer, data) {
                Ok(step) => {
                    tokio::spawn(async move {
                        let mut body = json!(step.run(&st, &peer).await);
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
    data: Option<Value>,
    ack: &mut Option<Ack>,
) -> Option<(Arc<super::session::Session>, crate::auth::Verified)> {
    let session = peer.session()?;
    let verified = token_of(&data)
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
    // Claim the identity under the lock: two racing authenticate events cannot both win.
    {
        let mut state = session.state();
        if state.identity.is_some() {
            drop(state);
            let body = error_reply(
                "already_authenticated",
                "this socket is already authenticated; use refresh to extend it",
            );
            reply(ack.take(), &body);
            return None;
        }
        state.identity = Some(verified.identity.clone());
        state.exp = verified.exp;
        state.handshake_since = data.as_ref().and_then(|d| d.get("since")).cloned();
    }
    Some((session, verified))
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

/// What is left of a join once the session took it: entering the room, or only reporting where
/// a room the socket is already in stands.
struct JoinStep {
    key: RoomKey,
    room: RoomName,
    fresh: bool,
    since: Option<rooms::Since>,
}

impl JoinStep {
    async fn run(self, st: &AppState, peer: &Peer) -> rooms::RoomEntry {
        if self.fresh {
            return rooms::enter(st, peer, &self.key, self.since).await;
        }
        // Already in the room: report where it stands; live delivery already reaches the socket.
        let now = st.bus.position(&self.key).await.ok();
        rooms::RoomEntry {
            room: self.room,
            epoch: now.as_ref().map(|p| p.epoch.clone()),
            offset: now.map(|p| p.offset),
            recovered: None,
            reason: None,
            replayed: None,
        }
    }
}

/// Checks a join against the policy and the rate, and records the room in the session.
fn join(st: &AppState, peer: &Peer, data: Option<Value>) -> Result<JoinStep, RoomError> {
    let session = peer
        .session()
        .ok_or_else(|| bad_request("socket is closing"))?;
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
    let (key, fresh) = {
        let mut state = session.state();
        let identity = state.identity.as_ref().ok_or_else(|| {
            RoomError::new("not_authenticated", "authenticate before joining rooms")
        })?;
        let own_auto = room == RoomName::institution(&identity.tenant)
            || room == RoomName::user(&identity.user_id);
        let key = RoomKey::new(identity.tenant.clone(), room.clone());
        if own_auto || state.rooms.contains(&room) {
            (key, false)
        } else {
            policy.check_join(identity, &room, state.rooms.len())?;
            if !state.take_join(st.config.join_rate.get()) {
                return Err(RoomError::new(
                    "rate_limited",
                    format!(
                        "at most {} joins per second; try again shortly",
                        st.config.join_rate
                    ),
                ));
            }
            if let Some(id) = state.identity.as_ref() {
                st.membership.add(&key, session.socket(id));
            }
            state.rooms.push(room.clone());
            (key, true)
        }
    };
    Ok(JoinStep {
        key,
        room,
        fresh,
        since: since.map(Ok),
    })
}

fn leave(st: &AppState, peer: &Peer, data: Option<Value>) -> Result<RoomName, RoomError> {
    let session = peer
        .session()
        .ok_or_else(|| bad_request("socket is closing"))?;
    let policy = &st.config.policy;
    let (name, _) = requested_room(&data)?;
    let room = policy.parse_room(&name)?;
    policy.check_leave(&room)?;
    let mut state = session.state();
    let identity = state
        .identity
        .clone()
        .ok_or_else(|| RoomError::new("not_authenticated", "authenticate first"))?;
    if let Some(pos) = state.rooms.iter().position(|r| *r == room) {
        state.rooms.swap_remove(pos);
        let key = RoomKey::new(identity.tenant.clone(), room.clone());
        st.relay.leave(&key, session.id);
        st.membership
            .remove(&key, session.socket(&identity), Exit::Left);
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
    let session = peer.session().ok_or(AuthError::NotAuthenticated)?;
    if session.identity().is_none() {
        return Err(AuthError::NotAuthenticated);
    }
    let token = token_of(&data)?.ok_or(AuthError::Missing)?;
    let verified = st.config.verifier.verify(&token)?;
    let (exp, left) = {
        let mut state = session.state();
        let current = state.identity.as_ref().ok_or(AuthError::NotAuthenticated)?;
        if current.user_id != verified.identity.user_id
            || current.tenant != verified.identity.tenant
        {
            return Err(AuthError::IdentityChanged);
        }
        let current = current.clone();
        state.exp = state.exp.max(verified.exp);
        let mut left = Vec::new();
        let rooms = std::mem::take(&mut state.rooms);
        for room in rooms {
            if st
                .config
                .policy
                .check_join(&verified.identity, &room, 0)
                .is_ok()
            {
                state.rooms.push(room);
            } else {
                let key = RoomKey::new(current.tenant.clone(), room.clone());
                st.relay.leave(&key, session.id);
                st.membership
                    .remove(&key, session.socket(&current), Exit::Left);
                left.push(room);
            }
        }
        state.identity = Some(verified.identity);
        (state.exp, left)
    };
    schedule_expiry(st, session.id, exp);
    Ok((exp, left))
}
