//! The `presence` request: `"exam:7"` or `{ room }` → `{ ok: true, room, count, members?,
//! truncated? }`. Only a member of the room may ask, and the room policy applies.

use serde_json::{json, Value};

use super::handlers::requested_room;
use crate::auth::RoomError;
use crate::events::ids::is_automatic_kind;
use crate::events::{RoomKey, RoomName};
use crate::metrics;
use crate::peer::Peer;
use crate::state::AppState;

/// Checks a presence request: a valid room of a kind with presence that the socket is in.
pub(super) fn room(st: &AppState, peer: &Peer, data: Option<Value>) -> Result<RoomKey, RoomError> {
    let refused = |e: RoomError| {
        ::metrics::counter!(metrics::PRESENCE_REFUSED, "reason" => e.code).increment(1);
        e
    };
    check(st, peer, data).map_err(refused)
}

fn check(st: &AppState, peer: &Peer, data: Option<Value>) -> Result<RoomKey, RoomError> {
    let session = peer.session();
    let policy = &st.config.policy;
    let (name, _) = requested_room(&data)?;
    let room = policy.parse_room(&name)?;
    let state = session.state();
    // Authenticated means counted in the automatic rooms (the session's state machine).
    let auth = state.auth().ok_or_else(|| {
        RoomError::new(
            "not_authenticated",
            "authenticate before asking for presence",
        )
    })?;
    let identity = &auth.identity;
    let kind = room.kind();
    if !is_automatic_kind(kind) && !policy.kinds.contains(kind) {
        return Err(RoomError::new(
            "room_kind_not_allowed",
            format!("there are no rooms of kind {kind} on this gateway"),
        ));
    }
    st.presence
        .tracked(&room)
        .map_err(|e| RoomError::new(e.code(), e.to_string()))?;
    let member = room == RoomName::institution(&identity.tenant) || auth.rooms.contains(&room);
    if !member {
        return Err(RoomError::new(
            "forbidden_room",
            format!("only members of {room} may see its presence; join it first"),
        ));
    }
    Ok(RoomKey::new(identity.tenant.clone(), room))
}

/// The answer to a checked request.
pub(super) async fn answer(st: &AppState, key: &RoomKey) -> Value {
    match st.presence.read(key).await {
        Ok(answer) => {
            let mut body = json!(answer);
            body["ok"] = json!(true);
            body
        }
        Err(e) => {
            ::metrics::counter!(metrics::PRESENCE_REFUSED, "reason" => e.code()).increment(1);
            super::error_reply(e.code(), &e.to_string())
        }
    }
}
