//! Entering a room: subscribe, then either start from the room's current position or replay
//! everything after the client's position, spliced into live delivery by the relay.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::bus::{BusError, Lost, Position, Recovery};
use crate::events::{RoomKey, RoomName};
use crate::metrics;
use crate::peer::Peer;
use crate::relay::Entering;
use crate::state::AppState;

/// How long entering a room waits for the bus to confirm the room's subscription. Past it the
/// entry goes on; deliveries start when the bus catches up.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);
/// Longest epoch a client may send.
const MAX_EPOCH_LEN: usize = 64;

/// Where a socket stands in a room after entering it; sent in `authenticated` and join acks.
#[derive(Debug, Clone, Serialize)]
pub struct RoomEntry {
    /// Client-facing room name.
    pub room: RoomName,
    /// The room's epoch (`null` when the bus could not be read).
    pub epoch: Option<Arc<str>>,
    /// The offset the client is at now: it has every event up to it that it asked for.
    pub offset: Option<u64>,
    /// Present when the client sent a position: whether every missed event was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Why not, when `recovered` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Events replayed from history (and buffered live ones sent with them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<usize>,
}

impl RoomEntry {
    /// An entry of `key` at `now` (unknown when the bus could not be read).
    fn at(key: &RoomKey, now: Option<Position>) -> Self {
        RoomEntry {
            room: key.room().clone(),
            epoch: now.as_ref().map(|p| p.epoch.clone()),
            offset: now.map(|p| p.offset),
            recovered: None,
            reason: None,
            replayed: None,
        }
    }
}

/// A position a client asked to recover from, or why it could not be read.
pub type Since = Result<Position, &'static str>;

/// Reads `{ epoch, offset }` as sent by a client.
pub fn parse_since(v: &Value) -> Since {
    let epoch = v
        .get("epoch")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty() && e.len() <= MAX_EPOCH_LEN);
    let offset = v.get("offset").and_then(Value::as_u64);
    match (epoch, offset) {
        (Some(epoch), Some(offset)) => Ok(Position {
            epoch: Arc::from(epoch),
            offset,
        }),
        _ => Err("invalid_since"),
    }
}

/// A room entry whose bus reads are done: live events of the room are held for the socket
/// from here on, and [`finish`] sends what it is owed and makes it a member.
pub struct Prepared {
    key: RoomKey,
    since: Option<Since>,
    read: Read,
}

/// Where the room stood when the entry was prepared.
enum Read {
    /// The socket is in the room already (or entering it): only where the room stands is read.
    Already,
    /// Where the room stands: the relay's head when it knew it (the room has local members;
    /// no bus read), else read from the bus after its subscription was confirmed.
    Bus(Result<Recovery, BusError>),
}

/// Enters `key` for `peer` (counted in the room by [`crate::relay::RelayHandle::add`]):
/// [`prepare`], then [`finish`]. Every way into a room comes here: with or without a position,
/// at authentication or on `join`, and a repeat join (which only reports where the room
/// stands).
pub async fn enter(st: &AppState, peer: &Peer, key: &RoomKey, since: Option<Since>) -> RoomEntry {
    let prepared = prepare(st, peer, key, since).await;
    finish(st, peer, prepared).await
}

/// First half of a room entry: from its return on, every live event of the room is either
/// held for `peer` or covered by the position read, so nothing published later can miss it.
/// The handshake runs this before the client hears it is connected.
pub async fn prepare(st: &AppState, peer: &Peer, key: &RoomKey, since: Option<Since>) -> Prepared {
    let read = match (st.relay.enter(key, peer.clone()).await, &since) {
        (Entering::Already, _) => Read::Already,
        // A room with local members: its subscription is live and the relay knows where it
        // stands, no read needed.
        (Entering::Held(Some(now)), None) => {
            tracing::debug!(peer = peer.id(), room = %key, offset = now.offset, "room entered at the relay's head");
            Read::Bus(Ok(Recovery::Replay {
                events: Vec::new(),
                now,
            }))
        }
        (Entering::Held(_), _) => {
            if !st.bus.wait_subscribed(key, SUBSCRIBE_WAIT).await {
                tracing::warn!(room = %key, "bus subscription not confirmed in time; entering anyway");
            }
            Read::Bus(match &since {
                None => st.bus.position(key).await.map(|now| Recovery::Replay {
                    events: Vec::new(),
                    now,
                }),
                Some(Ok(pos)) => {
                    st.bus
                        .recover(key, pos, st.config.transport.max_replay as u64)
                        .await
                }
                Some(Err(_)) => st.bus.position(key).await.map(|now| Recovery::Lost {
                    reason: Lost::TooOld,
                    now,
                }),
            })
        }
    };
    Prepared {
        key: key.clone(),
        since,
        read,
    }
}

/// Second half of a room entry: the relay sends the replay and the held live events, then adds
/// the socket to the room. Returns where the socket stands.
pub async fn finish(st: &AppState, peer: &Peer, p: Prepared) -> RoomEntry {
    let Prepared { key, since, read } = p;
    let key = &key;
    let id = peer.id();
    let read = match read {
        // Live delivery already reaches the socket: report where the room stands.
        Read::Already => return RoomEntry::at(key, st.bus.position(key).await.ok()),
        Read::Bus(read) => read,
    };
    let mut entry = RoomEntry::at(key, None);
    match read {
        Ok(Recovery::Replay { events, now }) => {
            let after = match &since {
                Some(Ok(pos)) => pos.offset,
                _ => now.offset,
            };
            let epoch = Some(now.epoch.clone());
            let done = st.relay.finish(key, id, epoch, after, events).await;
            entry = RoomEntry::at(key, Some(now));
            if since.is_some() {
                entry.recovered = Some(!done.overflowed);
                entry.replayed = Some(done.replayed + done.buffered);
                let result = if done.overflowed {
                    "buffer_overflow"
                } else {
                    "recovered"
                };
                ::metrics::counter!(metrics::RECOVERIES, "result" => result).increment(1);
                ::metrics::counter!(metrics::EVENTS_REPLAYED).increment(done.replayed as u64);
            }
        }
        Ok(Recovery::Lost { reason, now }) => {
            st.relay
                .finish(key, id, Some(now.epoch.clone()), now.offset, Vec::new())
                .await;
            let reason = match &since {
                Some(Err(code)) => code,
                _ => reason.as_str(),
            };
            ::metrics::counter!(metrics::RECOVERIES, "result" => reason).increment(1);
            entry = RoomEntry::at(key, Some(now));
            entry.recovered = Some(false);
            entry.reason = Some(reason);
        }
        Err(e) => {
            tracing::warn!(room = %key, error = %e, "room position unavailable; joining without one");
            st.relay.finish(key, id, None, 0, Vec::new()).await;
            if since.is_some() {
                ::metrics::counter!(metrics::RECOVERIES, "result" => "bus_unavailable")
                    .increment(1);
                entry.recovered = Some(false);
                entry.reason = Some("bus_unavailable");
            }
        }
    }
    entry
}
