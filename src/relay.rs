//! The relay: takes each bus message and hands it to the local sockets in its room, and splices
//! history replays into live delivery for sockets that are entering a room.
//!
//! One task owns all of it, so "a live event arrived" and "this socket finished its replay" can
//! never interleave: while a socket enters a room it is not yet in the Socket.IO room; live
//! events of that room are buffered for it; when its history read is done the relay sends the
//! replay, then the buffered events it did not already cover (by offset), then adds the socket
//! to the room, all in one step. Nothing is lost, doubled or reordered.
//!
//! The envelope of a live event is serialized once per event and room; Socket.IO's adapter then
//! writes the same encoded packet to every member.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SocketError, SocketIo};
use tokio::sync::{mpsc, oneshot};

use crate::bus::{BusMessage, Delivery};
use crate::events::envelope::now_millis;
use crate::events::{Event, RoomKey};
use crate::metrics;
use crate::state::AppState;

/// Most live events buffered for one socket while its history is read. Past it the socket is
/// told to resync that room instead (a history read that slow means Redis is in trouble).
const MAX_BUFFERED: usize = 10_000;

/// Server → client event: a room's history was lost, refetch its state.
pub const RESYNC: &str = "resync";

enum Control {
    Register {
        key: RoomKey,
        sid: Sid,
        done: oneshot::Sender<()>,
    },
    Finish {
        key: RoomKey,
        sid: Sid,
        after: u64,
        replay: Vec<(u64, Arc<Event>)>,
        done: oneshot::Sender<Finished>,
    },
}

/// What a finished room entry delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Finished {
    /// Events sent from history.
    pub replayed: usize,
    /// Live events sent from the buffer.
    pub buffered: usize,
    /// The buffer overflowed: the socket was told to resync instead.
    pub overflowed: bool,
}

/// Handle to the relay task, for the socket handlers.
#[derive(Clone)]
pub struct RelayHandle {
    control: mpsc::Sender<Control>,
}

/// The receiving end, given to [`run`].
pub struct RelayControl(mpsc::Receiver<Control>);

/// A relay handle and its control receiver.
pub fn channel() -> (RelayHandle, RelayControl) {
    let (tx, rx) = mpsc::channel(1024);
    (RelayHandle { control: tx }, RelayControl(rx))
}

impl RelayHandle {
    /// Starts buffering `key`'s live events for socket `sid`; returns once the relay has done so.
    pub async fn register(&self, key: &RoomKey, sid: Sid) {
        let (done, wait) = oneshot::channel();
        let msg = Control::Register {
            key: key.clone(),
            sid,
            done,
        };
        if self.control.send(msg).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Sends `replay` (events after `after`), then buffered live events after them, then adds
    /// the socket to the room.
    pub async fn finish(
        &self,
        key: &RoomKey,
        sid: Sid,
        after: u64,
        replay: Vec<(u64, Arc<Event>)>,
    ) -> Finished {
        let (done, wait) = oneshot::channel();
        let msg = Control::Finish {
            key: key.clone(),
            sid,
            after,
            replay,
            done,
        };
        if self.control.send(msg).await.is_err() {
            return Finished::default();
        }
        wait.await.unwrap_or_default()
    }
}

struct Pending {
    sid: Sid,
    buffer: Vec<Delivery>,
    overflowed: bool,
}

/// A socket that just entered a room, with the offset its entry covered. Events up to that
/// offset can still be on their way from the bus (published before the history read, not yet
/// relayed); they must not reach this socket a second time.
struct Entered {
    sid: Sid,
    upto: u64,
    at: Instant,
}

/// How long an entry watermark is kept without a later event of its room. The in-flight window
/// it guards is milliseconds long; this only bounds memory for rooms that fall silent.
const ENTERED_TTL: Duration = Duration::from_secs(30);

/// Relays bus messages and room entries until the bus closes its channel.
pub async fn run(
    io: SocketIo,
    state: Arc<AppState>,
    mut bus: mpsc::Receiver<BusMessage>,
    control: RelayControl,
) {
    let mut control = control.0;
    let mut pending: HashMap<RoomKey, Vec<Pending>> = HashMap::new();
    let mut entered: HashMap<RoomKey, Vec<Entered>> = HashMap::new();
    let mut prune = tokio::time::interval(ENTERED_TTL);
    loop {
        tokio::select! {
            _ = prune.tick() => {
                entered.retain(|_, list| {
                    list.retain(|e| e.at.elapsed() < ENTERED_TTL);
                    !list.is_empty()
                });
            }
            msg = bus.recv() => match msg {
                Some(BusMessage::Event(d)) => {
                    let skip: Vec<Sid> = match entered.get_mut(&d.key) {
                        Some(list) => {
                            let skip = list.iter().filter(|e| e.upto >= d.offset).map(|e| e.sid).collect();
                            // Events come in offset order: later ones are past every watermark
                            // at or below this offset.
                            list.retain(|e| e.upto > d.offset);
                            if list.is_empty() {
                                entered.remove(&d.key);
                            }
                            skip
                        }
                        None => Vec::new(),
                    };
                    relay_one(&io, &state, &d, &skip).await;
                    if let Some(waiting) = pending.get_mut(&d.key) {
                        for p in waiting.iter_mut() {
                            if p.buffer.len() < MAX_BUFFERED {
                                p.buffer.push(d.clone());
                            } else {
                                p.overflowed = true;
                            }
                        }
                    }
                }
                Some(BusMessage::Resync { key, now }) => {
                    // Offsets restart with the new epoch: old watermarks mean nothing now.
                    entered.remove(&key);
                    ::metrics::counter!(metrics::RESYNCS).increment(1);
                    let body = json!({ "room": key.room(), "epoch": now.epoch, "offset": now.offset });
                    if let Err(e) = io.to(key.as_str().to_owned()).emit(RESYNC, &body).await {
                        tracing::warn!(room = %key, error = %e, "resync not sent to every socket");
                    }
                }
                None => return,
            },
            ctl = control.recv() => match ctl {
                Some(Control::Register { key, sid, done }) => {
                    pending.entry(key).or_default().push(Pending { sid, buffer: Vec::new(), overflowed: false });
                    let _ = done.send(());
                }
                Some(Control::Finish { key, sid, after, replay, done }) => {
                    let mine = pending.get_mut(&key).and_then(|list| {
                        let i = list.iter().position(|p| p.sid == sid)?;
                        Some(list.swap_remove(i))
                    });
                    if pending.get(&key).is_some_and(Vec::is_empty) {
                        pending.remove(&key);
                    }
                    let finished = match (io.get_socket(sid), mine) {
                        (Some(s), Some(p)) => {
                            let (finished, upto) = splice(&state, &s, &key, after, replay, p);
                            entered.entry(key).or_default().push(Entered { sid, upto, at: Instant::now() });
                            finished
                        }
                        _ => Finished::default(),
                    };
                    let _ = done.send(finished);
                }
                None => return,
            },
        }
    }
}

/// Replay, then buffered live events past it, then membership: one uninterrupted step.
/// Returns what was sent and the offset the socket now has everything up to.
fn splice(
    state: &AppState,
    s: &SocketRef,
    key: &RoomKey,
    after: u64,
    replay: Vec<(u64, Arc<Event>)>,
    p: Pending,
) -> (Finished, u64) {
    let mut out = Finished::default();
    let mut last = after;
    for (offset, event) in replay.iter().filter(|(o, _)| *o > after) {
        if !send(state, s, key, *offset, event) {
            // Cut or gone: it will come back and recover from its own position.
            return (out, last);
        }
        last = *offset;
        out.replayed += 1;
    }
    if p.overflowed {
        out.overflowed = true;
        ::metrics::counter!(metrics::RESYNCS).increment(1);
        let body = json!({ "room": key.room(), "reason": "buffer_overflow" });
        if let Err(e) = s.emit(RESYNC, &body) {
            tracing::debug!(error = %e, "resync not sent");
        }
    } else {
        // Buffered events arrive in offset order; skip what the replay already covered.
        for d in p.buffer.iter() {
            if d.offset > last {
                if !send(state, s, key, d.offset, &d.event) {
                    return (out, last);
                }
                last = d.offset;
                out.buffered += 1;
            }
        }
    }
    s.join(key.as_str().to_owned());
    tracing::debug!(sid = %s.id, room = %key, after, replayed = out.replayed, buffered = out.buffered, last, "room entered");
    (out, last)
}

/// Sends one event to one socket; false if the socket had to be cut (buffer full) or is gone.
fn send(state: &AppState, s: &SocketRef, key: &RoomKey, offset: u64, event: &Event) -> bool {
    let envelope = event.client_envelope(key.room(), offset);
    match s.emit(&*event.channel, &envelope) {
        Ok(()) => true,
        Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)) => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "buffer_full").increment(1);
            cut_slow_consumer(state, s, key);
            false
        }
        Err(e) => {
            let reason = if matches!(e, socketioxide::SendError::Serialize(_)) {
                "encode"
            } else {
                "closed"
            };
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => reason).increment(1);
            tracing::debug!(sid = %s.id, room = %key, offset, reason, "replayed event not sent");
            false
        }
    }
}

/// Hands one live event to every local socket of its room (but `skip`). The envelope is
/// serialized once; each socket gets its own send so that one whose buffer is full is known
/// by name and cut (see [`cut_slow_consumer`]), never silently skipped.
async fn relay_one(io: &SocketIo, state: &AppState, d: &Delivery, skip: &[Sid]) {
    let channel = metrics::channel_label(&d.event.channel);
    ::metrics::counter!(metrics::EVENTS_RECEIVED, "channel" => channel).increment(1);
    if state.membership.members(&d.key) == 0 {
        return;
    }
    let envelope = d.event.client_envelope(d.key.room(), d.offset);
    let raw = match serde_json::value::to_raw_value(&envelope) {
        Ok(raw) => raw,
        Err(e) => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode").increment(1);
            tracing::error!(room = %d.key, error = %e, "event could not be encoded");
            return;
        }
    };
    let mut sent = 0u64;
    for s in io.to(d.key.as_str().to_owned()).sockets() {
        if skip.contains(&s.id) {
            continue;
        }
        match s.emit(&*d.event.channel, &raw) {
            Ok(()) => sent += 1,
            Err(socketioxide::SendError::Socket(SocketError::InternalChannelFull)) => {
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "buffer_full")
                    .increment(1);
                cut_slow_consumer(state, &s, &d.key);
            }
            Err(e) => {
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "closed").increment(1);
                tracing::debug!(sid = %s.id, error = %e, "socket gone before delivery");
            }
        }
    }
    ::metrics::counter!(metrics::EVENTS_DELIVERED, "channel" => channel).increment(sent);
    let lag_ms = (now_millis() - d.event.timestamp).max(0);
    ::metrics::histogram!(metrics::DELIVERY_LAG).record(lag_ms as f64 / 1000.0);
}

/// A socket whose outgoing buffer is full cannot keep up: cut it rather than let it slow the
/// others or grow memory. Over WebSocket its TCP connection is shut down, which the stock
/// client treats as a lost transport: it reconnects and recovers what it missed from history.
/// A long-polling socket gets a Socket.IO disconnect (its transport has no connection of its own
/// to cut).
pub fn cut_slow_consumer(state: &AppState, s: &SocketRef, key: &RoomKey) {
    let conn = s
        .req_parts()
        .extensions
        .get::<axum::extract::ConnectInfo<crate::drain::ConnId>>()
        .map(|c| c.0);
    let transport = match s.transport_type() {
        socketioxide::TransportType::Websocket => "websocket",
        socketioxide::TransportType::Polling => "polling",
    };
    let cut = match (transport, conn) {
        ("websocket", Some(id)) => state.connections.close(id),
        _ => s.clone().disconnect().is_ok(),
    };
    if cut {
        ::metrics::counter!(metrics::SLOW_CONSUMERS, "transport" => transport).increment(1);
        tracing::warn!(sid = %s.id, room = %key, transport, "slow consumer cut: its outgoing buffer was full");
    }
}
