//! The relay: takes each bus message and hands it to the local sockets in its room, and splices
//! history replays into live delivery for sockets that are entering a room.
//!
//! One task owns all of it, so "a live event arrived" and "this socket finished its replay" can
//! never interleave: while a socket enters a room it is not yet in the Socket.IO room; live
//! events of that room are buffered for it; when its history read is done the relay sends the
//! replay, then the buffered events it did not already cover (by offset), then adds the socket
//! to the room, all in one step. Nothing is lost, doubled or reordered.
//!
//! The relay keeps the room → sockets map itself. A live event is encoded once (JSON and the
//! WebSocket frame); consecutive events of one room that reach the relay together are written
//! to each member as one frame sequence in a single write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{BusMessage, Delivery, Position};
use crate::events::envelope::now_millis;
use crate::events::{Event, RoomKey};
use crate::metrics;
use crate::socket::peer::{Outgoing, Peer, PeerId, Sent};
use crate::state::AppState;

/// Most live events buffered for one socket while its history is read. Past it the socket is
/// told to resync that room instead (a history read that slow means Redis is in trouble).
const MAX_BUFFERED: usize = 10_000;

/// Most bus messages taken in one go; consecutive events of a room among them share a write.
const MAX_BATCH: usize = 64;

/// Server → client event: a room's history was lost, refetch its state.
pub const RESYNC: &str = "resync";

enum Control {
    Enter {
        key: RoomKey,
        peer: Peer,
        done: oneshot::Sender<Option<Position>>,
    },
    Register {
        key: RoomKey,
        peer: Peer,
        done: oneshot::Sender<()>,
    },
    Finish {
        key: RoomKey,
        id: PeerId,
        epoch: Option<Arc<str>>,
        after: u64,
        replay: Vec<(u64, Arc<Event>)>,
        done: oneshot::Sender<Finished>,
    },
    Leave {
        key: RoomKey,
        id: PeerId,
    },
    Gone {
        id: PeerId,
        keys: Vec<RoomKey>,
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
    control: mpsc::UnboundedSender<Control>,
}

/// The receiving end, given to [`run`].
pub struct RelayControl(mpsc::UnboundedReceiver<Control>);

/// A relay handle and its control receiver.
pub fn channel() -> (RelayHandle, RelayControl) {
    let (tx, rx) = mpsc::unbounded_channel();
    (RelayHandle { control: tx }, RelayControl(rx))
}

impl RelayHandle {
    /// Enters `key` at once if the relay already knows where the room stands (it has local
    /// members, so its subscription is live and every later event will come through here): the
    /// peer is in the room and the position is returned. Otherwise the peer is registered as
    /// entering (like [`RelayHandle::register`]) and `None` is returned.
    pub async fn enter(&self, key: &RoomKey, peer: Peer) -> Option<Position> {
        let (done, wait) = oneshot::channel();
        let msg = Control::Enter {
            key: key.clone(),
            peer,
            done,
        };
        if self.control.send(msg).is_err() {
            return None;
        }
        wait.await.ok().flatten()
    }

    /// Starts buffering `key`'s live events for `peer`; returns once the relay has done so.
    pub async fn register(&self, key: &RoomKey, peer: Peer) {
        let (done, wait) = oneshot::channel();
        let msg = Control::Register {
            key: key.clone(),
            peer,
            done,
        };
        if self.control.send(msg).is_ok() {
            let _ = wait.await;
        }
    }

    /// Sends `replay` (events after `after`), then buffered live events after them, then adds
    /// the peer to the room.
    pub async fn finish(
        &self,
        key: &RoomKey,
        id: PeerId,
        epoch: Option<Arc<str>>,
        after: u64,
        replay: Vec<(u64, Arc<Event>)>,
    ) -> Finished {
        let (done, wait) = oneshot::channel();
        let msg = Control::Finish {
            key: key.clone(),
            id,
            epoch,
            after,
            replay,
            done,
        };
        if self.control.send(msg).is_err() {
            return Finished::default();
        }
        wait.await.unwrap_or_default()
    }

    /// Takes a peer out of one room.
    pub fn leave(&self, key: &RoomKey, id: PeerId) {
        let _ = self.control.send(Control::Leave {
            key: key.clone(),
            id,
        });
    }

    /// Takes a disconnected peer out of its rooms (and any room it was entering).
    pub fn gone(&self, id: PeerId, keys: Vec<RoomKey>) {
        let _ = self.control.send(Control::Gone { id, keys });
    }
}

struct Pending {
    peer: Peer,
    buffer: Vec<Delivery>,
    overflowed: bool,
}

/// A socket that just entered a room, with the offset its entry covered. Events up to that
/// offset can still be on their way from the bus (published before the history read, not yet
/// relayed); they must not reach this socket a second time.
struct Entered {
    id: PeerId,
    upto: u64,
    at: Instant,
}

/// How long an entry watermark is kept without a later event of its room. The in-flight window
/// it guards is milliseconds long; this only bounds memory for rooms that fall silent.
const ENTERED_TTL: Duration = Duration::from_secs(30);

/// Rooms at most this big are searched by walking their list; bigger ones keep an index.
const SMALL_ROOM: usize = 32;

/// The local members of one room: a list to walk and, once the room is big, an index to remove
/// from it in O(1). Most rooms are one user's own room with one socket: no index, no spare
/// capacity.
#[derive(Default)]
struct Members {
    list: Vec<Peer>,
    index: Option<HashMap<PeerId, usize>>,
    /// Where the room stands as far as the relay knows: the newest of the last event relayed
    /// and the positions members entered at. Every later event comes through the relay while
    /// the room has members.
    head: Option<Position>,
}

impl Members {
    /// Raises the known head to `(epoch, offset)`; an epoch that disagrees makes it unknown.
    fn saw(&mut self, epoch: &Arc<str>, offset: u64) {
        self.head = match self.head.take() {
            None => Some(Position {
                epoch: epoch.clone(),
                offset,
            }),
            Some(h) if h.epoch == *epoch => Some(Position {
                offset: h.offset.max(offset),
                ..h
            }),
            Some(_) => None,
        };
    }
}

impl Members {
    fn position(&self, id: PeerId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.list.iter().position(|p| p.id() == id),
        }
    }

    fn insert(&mut self, peer: Peer) {
        let id = peer.id();
        if self.position(id).is_some() {
            return;
        }
        if self.list.capacity() == 0 {
            self.list.reserve_exact(1);
        }
        self.list.push(peer);
        match &mut self.index {
            Some(index) => {
                index.insert(id, self.list.len() - 1);
            }
            None if self.list.len() > SMALL_ROOM => {
                let index = self
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.id(), i))
                    .collect();
                self.index = Some(index);
            }
            None => {}
        }
    }

    fn remove(&mut self, id: PeerId) {
        let Some(i) = self.position(id) else { return };
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.list.get(i) {
                index.insert(moved.id(), i);
            }
        }
    }
}

/// Everything the relay task owns.
struct Relay {
    state: Arc<AppState>,
    rooms: HashMap<RoomKey, Members>,
    pending: HashMap<RoomKey, Vec<Pending>>,
    entered: HashMap<RoomKey, Vec<Entered>>,
}

/// Relays bus messages and room entries until the bus closes its channel.
pub async fn run(state: Arc<AppState>, mut bus: mpsc::Receiver<BusMessage>, control: RelayControl) {
    let mut control = control.0;
    let mut relay = Relay {
        state,
        rooms: HashMap::new(),
        pending: HashMap::new(),
        entered: HashMap::new(),
    };
    let mut prune = tokio::time::interval(ENTERED_TTL);
    let mut batch: Vec<BusMessage> = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            _ = prune.tick() => {
                relay.entered.retain(|_, list| {
                    list.retain(|e| e.at.elapsed() < ENTERED_TTL);
                    !list.is_empty()
                });
                // Give back what a reconnect storm grew.
                if relay.entered.capacity() > 2 * relay.entered.len() + 64 {
                    relay.entered.shrink_to_fit();
                }
                if relay.rooms.capacity() > 2 * relay.rooms.len() + 64 {
                    relay.rooms.shrink_to_fit();
                }
            }
            n = bus.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
                relay.on_bus(&mut batch).await;
            }
            ctl = control.recv() => match ctl {
                Some(ctl) => relay.on_control(ctl),
                None => return,
            },
        }
    }
}

impl Relay {
    /// Handles a run of bus messages in order; consecutive events of one room go together.
    async fn on_bus(&mut self, batch: &mut Vec<BusMessage>) {
        let mut run: Vec<Delivery> = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                BusMessage::Event(d) => {
                    if run.first().is_some_and(|first| first.key != d.key) {
                        self.relay_run(std::mem::take(&mut run));
                    }
                    run.push(d);
                }
                BusMessage::Resync { key, now } => {
                    if !run.is_empty() {
                        self.relay_run(std::mem::take(&mut run));
                    }
                    self.resync(&key, &now);
                }
            }
        }
        if !run.is_empty() {
            self.relay_run(run);
        }
        tokio::task::yield_now().await;
    }

    fn resync(&mut self, key: &RoomKey, now: &crate::bus::Position) {
        // Offsets restart with the new epoch: old watermarks mean nothing now.
        self.entered.remove(key);
        ::metrics::counter!(metrics::RESYNCS).increment(1);
        let body = json!({ "room": key.room(), "epoch": now.epoch, "offset": now.offset });
        if let Some(members) = self.rooms.get_mut(key) {
            members.head = Some(now.clone());
            for peer in &members.list {
                peer.emit(RESYNC, &body);
            }
        }
    }

    fn on_control(&mut self, ctl: Control) {
        match ctl {
            Control::Enter { key, peer, done } => {
                let head = self.rooms.get(&key).and_then(|m| m.head.clone());
                match head {
                    Some(head) if wants(&peer, &key) => {
                        let id = peer.id();
                        if let Some(members) = self.rooms.get_mut(&key) {
                            members.insert(peer);
                        }
                        // Events up to the head may still be on their way from the bus.
                        self.entered.entry(key.clone()).or_default().push(Entered {
                            id,
                            upto: head.offset,
                            at: Instant::now(),
                        });
                        tracing::debug!(peer = id, room = %key, offset = head.offset, "room entered at the relay's head");
                        let _ = done.send(Some(head));
                    }
                    _ => {
                        self.pending.entry(key).or_default().push(Pending {
                            peer,
                            buffer: Vec::new(),
                            overflowed: false,
                        });
                        let _ = done.send(None);
                    }
                }
            }
            Control::Register { key, peer, done } => {
                self.pending.entry(key).or_default().push(Pending {
                    peer,
                    buffer: Vec::new(),
                    overflowed: false,
                });
                let _ = done.send(());
            }
            Control::Finish {
                key,
                id,
                epoch,
                after,
                replay,
                done,
            } => {
                let mine = self.take_pending(&key, id);
                let finished = match mine {
                    Some(p) if wants(&p.peer, &key) => {
                        let peer = p.peer.clone();
                        let (finished, upto) = splice(&self.state, &peer, &key, after, replay, p);
                        let members = self.rooms.entry(key.clone()).or_default();
                        members.insert(peer);
                        // After an overflow the socket is behind what was relayed: not a head.
                        if let (Some(epoch), false) = (&epoch, finished.overflowed) {
                            members.saw(epoch, upto);
                        }
                        self.entered.entry(key).or_default().push(Entered {
                            id,
                            upto,
                            at: Instant::now(),
                        });
                        finished
                    }
                    _ => Finished::default(),
                };
                let _ = done.send(finished);
            }
            Control::Leave { key, id } => self.remove_member(&key, id),
            Control::Gone { id, keys } => {
                for key in &keys {
                    self.remove_member(key, id);
                    self.take_pending(key, id);
                }
            }
        }
    }

    fn take_pending(&mut self, key: &RoomKey, id: PeerId) -> Option<Pending> {
        let list = self.pending.get_mut(key)?;
        let mine = list
            .iter()
            .position(|p| p.peer.id() == id)
            .map(|i| list.swap_remove(i));
        if list.is_empty() {
            self.pending.remove(key);
        }
        mine
    }

    fn remove_member(&mut self, key: &RoomKey, id: PeerId) {
        if let Some(members) = self.rooms.get_mut(key) {
            members.remove(id);
            if members.list.is_empty() {
                self.rooms.remove(key);
            }
        }
    }

    /// Peers entered at or after `offset` that must not get it again; prunes watermarks the
    /// stream has passed.
    fn skip_for(&mut self, key: &RoomKey, offset: u64) -> Vec<PeerId> {
        let Some(list) = self.entered.get_mut(key) else {
            return Vec::new();
        };
        let skip = list
            .iter()
            .filter(|e| e.upto >= offset)
            .map(|e| e.id)
            .collect();
        // Events come in offset order: later ones are past every watermark at or below this.
        list.retain(|e| e.upto > offset);
        if list.is_empty() {
            self.entered.remove(key);
        }
        skip
    }

    /// Delivers consecutive live events of one room to its members and to sockets entering it.
    fn relay_run(&mut self, run: Vec<Delivery>) {
        let key = run[0].key.clone();
        let skips: Vec<Vec<PeerId>> = run.iter().map(|d| self.skip_for(&key, d.offset)).collect();
        if let Some(members) = self.rooms.get_mut(&key) {
            let encoded: Vec<Outgoing> = run.iter().filter_map(encode).collect();
            if encoded.len() == run.len() {
                deliver(&self.state, &key, &members.list, &encoded, &skips);
            }
            for d in &run {
                members.saw(&d.epoch, d.offset);
            }
        }
        for d in &run {
            let channel = metrics::channel_label(&d.event.channel);
            ::metrics::counter!(metrics::EVENTS_RECEIVED, "channel" => channel).increment(1);
            let lag_ms = (now_millis() - d.event.timestamp).max(0);
            ::metrics::histogram!(metrics::DELIVERY_LAG).record(lag_ms as f64 / 1000.0);
        }
        if let Some(waiting) = self.pending.get_mut(&key) {
            for p in waiting.iter_mut() {
                for d in &run {
                    if p.buffer.len() < MAX_BUFFERED {
                        p.buffer.push(d.clone());
                    } else {
                        p.overflowed = true;
                    }
                }
            }
        }
    }
}

/// Whether `peer` should be in `key` now: connected, authenticated in the room's tenant, and
/// the room is one of its automatic rooms or one it joined and has not left. Checked under the
/// session's lock when the relay adds a member; `leave`, `refresh` and disconnects change the
/// session before they tell the relay, so a join whose entry is overtaken by its own leave (or
/// by a disconnect) never lands.
fn wants(peer: &Peer, key: &RoomKey) -> bool {
    if !peer.is_open() {
        return false;
    }
    let Some(session) = peer.session() else {
        return false;
    };
    let state = session.state();
    let Some(id) = state.identity.as_ref().filter(|_| !state.closed) else {
        return false;
    };
    let room = key.room();
    id.tenant == *key.tenant()
        && (*room == crate::events::RoomName::institution(&id.tenant)
            || *room == crate::events::RoomName::user(&id.user_id)
            || state.rooms.contains(room))
}

/// The client envelope of a live event, encoded once.
fn encode(d: &Delivery) -> Option<Outgoing> {
    let envelope = d.event.client_envelope(d.key.room(), d.offset);
    match serde_json::value::to_raw_value(&envelope) {
        Ok(raw) => Some(Outgoing::new(d.event.channel.clone(), raw)),
        Err(e) => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode").increment(1);
            tracing::error!(room = %d.key, error = %e, "event could not be encoded");
            None
        }
    }
}

/// Hands events to every member (but those in each event's skip list). When nobody is
/// skipped, a WebSocket member gets all of them in one write.
fn deliver(
    state: &AppState,
    key: &RoomKey,
    members: &[Peer],
    events: &[Outgoing],
    skips: &[Vec<PeerId>],
) {
    // The common case: nobody to skip, so every member gets the same bytes and no member's id
    // is looked at (each look is a cache miss per delivery).
    let together = skips.iter().all(Vec::is_empty);
    let all = together.then(|| match events {
        [one] => one.frame().clone(),
        _ => {
            let mut all = bytes::BytesMut::new();
            for ev in events {
                all.extend_from_slice(ev.frame());
            }
            all.freeze()
        }
    });
    let mut sent = 0u64;
    for peer in members {
        let result = match (&all, peer) {
            (Some(all), Peer::Ws(conn)) => conn.send(all.clone(), events.len()),
            _ => {
                let id = peer.id();
                let mut result = Sent::Ok;
                for (ev, skip) in events.iter().zip(skips) {
                    if skip.contains(&id) {
                        continue;
                    }
                    result = peer.send(ev);
                    if result != Sent::Ok {
                        break;
                    }
                }
                result
            }
        };
        match result {
            Sent::Ok => sent += 1,
            Sent::Full => {
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "buffer_full")
                    .increment(1);
                cut_slow_consumer(state, peer, key);
            }
            Sent::Closed => {
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "closed").increment(1);
                tracing::debug!(peer = peer.id(), room = %key, "socket gone before delivery");
            }
        }
    }
    if let Some(first) = events.first() {
        let channel = metrics::channel_label(&first.name);
        ::metrics::counter!(metrics::EVENTS_DELIVERED, "channel" => channel)
            .increment(sent * events.len() as u64);
    }
}

/// Replay, then buffered live events past it, then membership: one uninterrupted step.
/// Returns what was sent and the offset the socket now has everything up to.
fn splice(
    state: &AppState,
    peer: &Peer,
    key: &RoomKey,
    after: u64,
    replay: Vec<(u64, Arc<Event>)>,
    p: Pending,
) -> (Finished, u64) {
    let mut out = Finished::default();
    let mut last = after;
    for (offset, event) in replay.iter().filter(|(o, _)| *o > after) {
        if !send_one(state, peer, key, *offset, event) {
            // Cut or gone: it will come back and recover from its own position.
            return (out, last);
        }
        last = *offset;
        out.replayed += 1;
    }
    if p.overflowed {
        out.overflowed = true;
        ::metrics::counter!(metrics::RESYNCS).increment(1);
        peer.emit(
            RESYNC,
            &json!({ "room": key.room(), "reason": "buffer_overflow" }),
        );
    } else {
        // Buffered events arrive in offset order; skip what the replay already covered.
        for d in p.buffer.iter() {
            if d.offset > last {
                if !send_one(state, peer, key, d.offset, &d.event) {
                    return (out, last);
                }
                last = d.offset;
                out.buffered += 1;
            }
        }
    }
    tracing::debug!(peer = peer.id(), room = %key, after, replayed = out.replayed, buffered = out.buffered, last, "room entered");
    (out, last)
}

/// Sends one event to one socket; false if the socket had to be cut (buffer full) or is gone.
fn send_one(state: &AppState, peer: &Peer, key: &RoomKey, offset: u64, event: &Event) -> bool {
    let envelope = event.client_envelope(key.room(), offset);
    let Ok(raw) = serde_json::value::to_raw_value(&envelope) else {
        ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode").increment(1);
        return false;
    };
    match peer.send_replay(&Outgoing::new(event.channel.clone(), raw)) {
        Sent::Ok => true,
        Sent::Full => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "buffer_full").increment(1);
            cut_slow_consumer(state, peer, key);
            false
        }
        Sent::Closed => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "closed").increment(1);
            tracing::debug!(peer = peer.id(), room = %key, offset, "replayed event not sent");
            false
        }
    }
}

/// A socket whose outgoing buffer is full cannot keep up: cut it rather than let it slow the
/// others or grow memory. Over WebSocket its TCP connection is shut down, which the stock
/// client treats as a lost transport: it reconnects and recovers what it missed from history.
/// A long-polling socket gets a Socket.IO disconnect (its transport has no connection of its own
/// to cut).
pub fn cut_slow_consumer(state: &AppState, peer: &Peer, key: &RoomKey) {
    let transport = peer.transport();
    let cut = match peer {
        Peer::Ws(conn) => state.connections.close(conn.conn_id()),
        Peer::Sio(s) => {
            let conn = s
                .req_parts()
                .extensions
                .get::<axum::extract::ConnectInfo<crate::drain::ConnId>>()
                .map(|c| c.0);
            match (transport, conn) {
                ("websocket", Some(id)) => state.connections.close(id),
                _ => s.clone().disconnect().is_ok(),
            }
        }
    };
    if cut {
        ::metrics::counter!(metrics::SLOW_CONSUMERS, "transport" => transport).increment(1);
        tracing::warn!(peer = peer.id(), room = %key, transport, "slow consumer cut: its outgoing buffer was full");
    }
}
