//! The relay: takes each bus message and hands it to the local sockets in its room, and splices
//! history replays into live delivery for sockets that are entering a room.
//!
//! One task owns all of it, so "a live event arrived" and "this socket finished its replay" can
//! never interleave: while a socket enters a room it is not yet one of its members; live
//! events of that room are buffered for it; when its history read is done the relay sends the
//! replay, then the buffered events it did not already cover (by offset), then adds the socket
//! to the room, all in one step. Nothing is lost, doubled or reordered.
//!
//! The relay keeps the room → sockets map itself. A live event is encoded once (JSON and the
//! WebSocket frame); consecutive events of one room that reach the relay together are written
//! to each member as one frame sequence in a single write.
//!
//! `members.rs` holds a room's members (and who may be one); `deliver.rs` writes to sockets.

mod deliver;
mod members;
mod membership;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{BusMessage, Delivery, Position};
use crate::events::envelope::now_millis;
use crate::events::{Event, RoomKey};
use crate::lifecycle::{Lifecycle, Socket};
use crate::metrics;
use crate::peer::{Outgoing, Peer, PeerId};
use crate::presence::Presence;
use deliver::{deliver, encode, splice};
use members::{wants, Members};
use membership::Exit;

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
        done: oneshot::Sender<Entering>,
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

/// What [`RelayHandle::enter`] did.
#[derive(Debug)]
pub enum Entering {
    /// Live events are held for the peer; the room's head if the relay knows it.
    Held(Option<Position>),
    /// The peer is in the room already, or entering it: nothing changed.
    Already,
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

/// Handle to the relay task and the room counts: the one owner of room membership. A socket
/// is counted in a room ([`RelayHandle::add`]) when it asks to be in it, entered
/// ([`RelayHandle::enter`], [`RelayHandle::finish`]), and taken out ([`RelayHandle::leave`],
/// [`RelayHandle::gone`]) through here only.
#[derive(Clone)]
pub struct RelayHandle {
    control: mpsc::UnboundedSender<Control>,
    counts: Arc<membership::Membership>,
}

/// The receiving end, given to [`run`].
pub struct RelayControl(mpsc::UnboundedReceiver<Control>);

/// A relay handle and its control receiver; every room entry and exit is reported to
/// `presence` and `lifecycle`.
///
/// The control channel is unbounded on purpose: `leave` and disconnect cleanup are sent from
/// code that must not wait (under a session's lock, in a socket's read loop) and must never be
/// dropped, or a socket would stay in a room it left. What can be in it is bounded by the
/// sockets themselves: a disconnect each, and per socket only the joins its join rate allows,
/// each waiting for its own answer.
pub fn channel(
    bus: Arc<dyn crate::bus::Bus>,
    presence: Arc<Presence>,
    lifecycle: Arc<Lifecycle>,
) -> (RelayHandle, RelayControl) {
    let (tx, rx) = mpsc::unbounded_channel();
    let counts = Arc::new(membership::Membership::new(bus, presence, lifecycle));
    (
        RelayHandle {
            control: tx,
            counts,
        },
        RelayControl(rx),
    )
}

impl RelayHandle {
    /// Counts socket `who` in `key` (it is about to enter): the bus subscribes on the first;
    /// presence and the lifecycle stream hear of the entry.
    pub fn add(&self, key: &RoomKey, who: Socket<'_>) {
        self.counts.add(key, who);
    }

    /// Starts holding `key`'s live events for `peer` and tells where the room stands if the
    /// relay knows it (the room has local members, so its subscription is live and every later
    /// event comes through here). [`RelayHandle::finish`] makes the peer a member. A peer that
    /// is a member already, or entering, is left as it is ([`Entering::Already`]).
    pub async fn enter(&self, key: &RoomKey, peer: Peer) -> Entering {
        let key = key.clone();
        let asked = self.ask(|done| Control::Enter { key, peer, done });
        asked.await.unwrap_or(Entering::Held(None))
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
        let key = key.clone();
        let asked = self.ask(|done| Control::Finish {
            key,
            id,
            epoch,
            after,
            replay,
            done,
        });
        asked.await.unwrap_or_default()
    }

    /// Sends the relay task a request and waits for its answer (`None` if the task is gone).
    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Control) -> Option<T> {
        let (done, wait) = oneshot::channel();
        self.control.send(request(done)).ok()?;
        wait.await.ok()
    }

    /// Takes socket `who` out of one room it left; the bus unsubscribes after the last.
    pub fn leave(&self, key: &RoomKey, who: Socket<'_>) {
        let id = who.id;
        self.counts.remove(key, who, Exit::Left);
        let _ = self.control.send(Control::Leave {
            key: key.clone(),
            id,
        });
    }

    /// Takes a disconnected peer out of its rooms `keys` (and any room it was entering); `who`
    /// names it when it was authenticated (it has no rooms otherwise).
    pub fn gone(&self, id: PeerId, who: Option<Socket<'_>>, keys: Vec<RoomKey>) {
        if let Some(who) = who {
            for key in &keys {
                self.counts.remove(key, who, Exit::Disconnected);
            }
        }
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

/// Everything the relay task owns.
struct Relay {
    rooms: HashMap<RoomKey, Members>,
    pending: HashMap<RoomKey, Vec<Pending>>,
    entered: HashMap<RoomKey, Vec<Entered>>,
}

/// Relays bus messages and room entries until `stop` is cancelled or the bus closes its channel.
pub async fn run(
    mut bus: mpsc::Receiver<BusMessage>,
    control: RelayControl,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut control = control.0;
    let mut relay = Relay {
        rooms: HashMap::new(),
        pending: HashMap::new(),
        entered: HashMap::new(),
    };
    let mut prune = tokio::time::interval(ENTERED_TTL);
    let mut batch: Vec<BusMessage> = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
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
                // Membership changes made before these events were published come first: a
                // socket told it left a room gets none of the room's later events (the select
                // alone could pick the events before a leave already queued).
                while let Ok(ctl) = control.try_recv() {
                    relay.on_control(ctl);
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
                    self.relay_run(std::mem::take(&mut run));
                    self.resync(&key, &now);
                }
            }
        }
        self.relay_run(run);
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
                let id = peer.id();
                let member = self.rooms.get(&key).is_some_and(|m| m.contains(id));
                let entering = self
                    .pending
                    .get(&key)
                    .is_some_and(|list| list.iter().any(|p| p.peer.id() == id));
                if member || entering {
                    let _ = done.send(Entering::Already);
                    return;
                }
                let head = self.rooms.get(&key).and_then(|m| m.head.clone());
                self.pending.entry(key).or_default().push(Pending {
                    peer,
                    buffer: Vec::new(),
                    overflowed: false,
                });
                let _ = done.send(Entering::Held(head));
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
                        let (finished, upto) = splice(&peer, &key, after, replay, p);
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

    /// Delivers consecutive live events of one room (if any) to its members and to sockets
    /// entering it.
    fn relay_run(&mut self, run: Vec<Delivery>) {
        let Some(key) = run.first().map(|d| d.key.clone()) else {
            return;
        };
        let skips: Vec<Vec<PeerId>> = run.iter().map(|d| self.skip_for(&key, d.offset)).collect();
        if let Some(members) = self.rooms.get_mut(&key) {
            let encoded: Vec<Outgoing> = run.iter().filter_map(encode).collect();
            if encoded.len() == run.len() {
                deliver(&key, &members.list, &encoded, &skips);
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
