//! What the handlers, the relay and the timers see of a client: a connected client ([`Peer`]),
//! where its ack goes ([`Ack`]), an event encoded once for every peer ([`Outgoing`]), the
//! registry of connected peers, each one's [`session`] and the timers of all of them
//! ([`deadlines`]).
//!
//! Every session (WebSocket, long-polling, and long-polling upgraded to WebSocket) runs on the
//! gateway's own transport ([`crate::wire`]); the layers above see only a [`Peer`], never the
//! transport.

pub mod deadlines;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::metrics;
use crate::wire::codec::{Codec, EncodeError};
pub use crate::wire::Sent;
use crate::wire::{deflate, msgpack, packet, Conn};
use session::Session;

/// Gateway-wide id of a connected client.
pub type PeerId = u64;

/// A connected client, on the gateway's own transport ([`crate::wire`]).
#[derive(Clone)]
pub struct Peer(Arc<Conn<Arc<Session>>>);

impl Peer {
    /// A peer over the transport's session `conn`.
    pub fn new(conn: Arc<Conn<Arc<Session>>>) -> Self {
        Self(conn)
    }

    /// The peer's id.
    pub fn id(&self) -> PeerId {
        self.session().id
    }

    /// The client's session.
    pub fn session(&self) -> &Arc<Session> {
        self.0.user()
    }

    /// `websocket` or `polling` now (a metric label).
    pub fn transport(&self) -> &'static str {
        self.0.transport()
    }

    /// The Engine.IO session id the client knows.
    pub fn sid(&self) -> String {
        self.0.sid().to_string()
    }

    /// Whether the client can still be written to.
    pub fn is_open(&self) -> bool {
        self.0.is_open()
    }

    /// Sends a relayed event, refused ([`Sent::Full`]) when the client's queue is full.
    pub fn send(&self, ev: &Outgoing) -> Sent {
        self.0.send(ev.frame_for(self.0.codec()).clone(), 1)
    }

    /// Sends several relayed events of one room at once, to every member of the room in turn;
    /// `shared` keeps their frames back to back in each shape built so far, so each member
    /// gets them in one write.
    pub fn send_all(&self, shared: &mut SharedFrames, events: &[Outgoing]) -> Sent {
        let frames = shared.get(self.0.codec(), events).clone();
        self.0.send(frames, events.len())
    }

    /// Sends a replayed event: never refused for a full queue (a replay is bounded by
    /// `GATEWAY_MAX_REPLAY`). Replays are encoded for one socket, so they go uncompressed:
    /// compressing them would be work per socket, at the worst time (a reconnect storm).
    pub fn send_replay(&self, ev: &Outgoing) -> Sent {
        self.0
            .send_replay(ev.frame_for(self.0.codec().uncompressed()).clone())
    }

    /// Sends an event built by the gateway (not relayed), plain like every per-socket packet
    /// (see [`Peer::send_replay`]); failures are counted and logged.
    pub fn emit(&self, event: &str, data: &impl Serialize) {
        send_own(&self.0, event, self.0.codec().event(event, data));
    }

    /// Ends the Socket.IO session from the server side (the stock client then stays offline
    /// until the application reconnects it).
    pub fn disconnect(&self) {
        self.0.disconnect()
    }

    /// Cuts a client that cannot keep up at the transport level, so the stock client sees a
    /// lost transport, reconnects and recovers. Counted by the transport; false if it was gone.
    pub fn cut(&self) -> bool {
        self.0.cut("buffer_full")
    }
}

/// Sends `frame`, a packet the gateway built for this one client (`what`: the event's name, or
/// `ack`); a failure to encode or send it is counted and logged.
fn send_own(conn: &Conn<Arc<Session>>, what: &str, frame: Result<Bytes, EncodeError>) {
    let sent = match frame {
        Ok(frame) => conn.send(frame, 0),
        Err(e) => {
            tracing::error!(what, error = %e, "packet could not be encoded");
            Sent::Closed
        }
    };
    let reason = match sent {
        Sent::Ok => return,
        Sent::Full => "buffer_full",
        Sent::Closed => "closed",
    };
    ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => reason).increment(1);
    tracing::debug!(peer = conn.user().id, what, reason, "emit failed");
}

/// The ack a client asked for with an event: its session and the ack's id.
pub struct Ack(Arc<Conn<Arc<Session>>>, u64);

impl Ack {
    /// The ack `id` of the session `conn`.
    pub fn new(conn: Arc<Conn<Arc<Session>>>, id: u64) -> Self {
        Self(conn, id)
    }

    /// Answers the client's ack (plain, like every per-socket packet); a failure (the socket
    /// is gone) is counted.
    pub fn send(self, body: &impl Serialize) {
        send_own(&self.0, "ack", self.0.codec().ack(self.1, body));
    }
}

/// One event encoded once for every peer: its name and JSON, and the complete WebSocket frames
/// (also what a long-polling GET takes) in each shape a session may have agreed to: JSON text or MessagePack, each plain or compressed. Every shape is built on
/// first use, once, and the same bytes go to every socket that takes it.
pub struct Outgoing {
    /// Event name.
    pub name: Arc<str>,
    /// The argument as JSON.
    pub json: Box<RawValue>,
    /// `42["name",json]` framed.
    frame: OnceLock<Bytes>,
    /// The MessagePack packet framed.
    msgpack: OnceLock<Bytes>,
    /// The two frames compressed (`None`: below the threshold or no smaller; sent plain). The
    /// threshold is the gateway's, the same for every session.
    deflated: [OnceLock<Option<Bytes>>; 2],
}

impl Outgoing {
    /// An event to send.
    pub fn new(name: Arc<str>, json: Box<RawValue>) -> Self {
        Self {
            name,
            json,
            frame: OnceLock::new(),
            msgpack: OnceLock::new(),
            deflated: Default::default(),
        }
    }

    /// The JSON text WebSocket frame of this event.
    pub fn frame(&self) -> &Bytes {
        self.frame
            .get_or_init(|| packet::event_raw(&self.name, self.json.get()))
    }

    /// The MessagePack WebSocket frame of this event, from the argument parsed back into a
    /// value (raw JSON means nothing to the MessagePack encoder).
    pub fn msgpack_frame(&self) -> &Bytes {
        self.msgpack.get_or_init(|| {
            let value = serde_json::from_str(self.json.get()).unwrap_or_else(|e| {
                // Valid JSON by construction; only a nesting past serde_json's limit fails.
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode").increment(1);
                tracing::error!(event = %self.name, error = %e, "event could not be read back for MessagePack");
                Value::Null
            });
            match msgpack::event(&self.name, &value) {
                Ok(frame) => frame,
                Err(e) => {
                    ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode")
                        .increment(1);
                    tracing::error!(event = %self.name, error = %e, "event could not be encoded as MessagePack");
                    Bytes::new()
                }
            }
        })
    }

    /// The frame of this event for a session with `codec`.
    pub fn frame_for(&self, codec: Codec) -> &Bytes {
        let plain = if codec.msgpack {
            self.msgpack_frame()
        } else {
            self.frame()
        };
        match codec.deflate_min {
            Some(min) => self.deflated[usize::from(codec.msgpack)]
                .get_or_init(|| deflate::compress_frame(plain, min.get() as usize))
                .as_ref()
                .unwrap_or(plain),
            None => plain,
        }
    }
}

/// A room's events framed back to back for all its members, in up to four shapes (JSON or
/// MessagePack, plain or compressed), each made once for the whole room on first use.
#[derive(Default)]
pub struct SharedFrames([Option<Bytes>; 4]);

impl SharedFrames {
    /// `events` framed for a session with `codec`.
    pub fn get(&mut self, codec: Codec, events: &[Outgoing]) -> &Bytes {
        self.0[codec.variant()].get_or_insert_with(|| match events {
            [one] => one.frame_for(codec).clone(),
            _ => {
                let mut all = bytes::BytesMut::new();
                for ev in events {
                    all.extend_from_slice(ev.frame_for(codec));
                }
                all.freeze()
            }
        })
    }
}

/// Connected peers by id, for the timers.
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<PeerId, Peer>>,
}

impl Peers {
    /// Registers a connected peer.
    pub fn insert(&self, peer: Peer) {
        self.map.lock().insert(peer.id(), peer);
    }

    /// Forgets a peer.
    pub fn remove(&self, id: PeerId) {
        self.map.lock().remove(&id);
    }

    /// The peer with this id, if still connected.
    pub fn get(&self, id: PeerId) -> Option<Peer> {
        self.map.lock().get(&id).cloned()
    }

    /// Every connected peer (the control API looks through them).
    pub fn all(&self) -> Vec<Peer> {
        self.map.lock().values().cloned().collect()
    }
}
