//! What the handlers, the relay and the timers see of a client: a connected client ([`Peer`]),
//! where its ack goes ([`Ack`]), an event encoded once for every peer ([`Outgoing`]), the
//! registry of connected peers, each one's [`session`] and the timers of all of them
//! ([`deadlines`]).
//!
//! Every session (WebSocket, long-polling, and long-polling upgraded to WebSocket) runs on the
//! gateway's own transport ([`crate::wire`]), which implements [`Link`]; the layers above see
//! only a [`Peer`], never the transport.

pub mod deadlines;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::metrics;
use crate::wire::codec::Codec;
pub use crate::wire::Sent;
use crate::wire::{deflate, msgpack, packet, Conn};
use session::Session;

/// Gateway-wide id of a connected client.
pub type PeerId = u64;

/// One transport's side of a connected client.
pub trait Link: Send + Sync + 'static {
    /// The client's session.
    fn session(&self) -> &Arc<Session>;
    /// `websocket` or `polling` now (a metric label).
    fn transport(&self) -> &'static str;
    /// The Engine.IO session id the client knows.
    fn sid(&self) -> String;
    /// Whether the client can still be written to.
    fn is_open(&self) -> bool;
    /// Sends a relayed event, refused ([`Sent::Full`]) when the client's queue is full.
    fn send(&self, ev: &Outgoing) -> Sent;
    /// Sends several relayed events of one room at once, to every member of the room in turn;
    /// `shared` keeps their frames back to back in each shape built so far, for a transport
    /// that writes them in one go.
    fn send_all(&self, shared: &mut SharedFrames, events: &[Outgoing]) -> Sent {
        let _ = shared;
        for ev in events {
            let sent = self.send(ev);
            if sent != Sent::Ok {
                return sent;
            }
        }
        Sent::Ok
    }
    /// Sends a replayed event: never refused for a full queue (a replay is bounded by
    /// `GATEWAY_MAX_REPLAY`).
    fn send_replay(&self, ev: &Outgoing) -> Sent;
    /// Sends an event the gateway built (not relayed); see [`Peer::emit`].
    fn emit_raw(&self, event: &str, data: &RawValue) -> Sent;
    /// Ends the Socket.IO session from the server side (the stock client then stays offline
    /// until the application reconnects it).
    fn disconnect(&self);
    /// Cuts a client that cannot keep up at the transport level, so the stock client sees a
    /// lost transport, reconnects and recovers. Counted by the transport; false if it was gone.
    fn cut(&self) -> bool;
}

/// A connected client, whichever transport carries it.
#[derive(Clone)]
pub struct Peer(Arc<dyn Link>);

impl Peer {
    /// A peer over `link`.
    pub fn new(link: Arc<dyn Link>) -> Self {
        Self(link)
    }

    /// The peer's id.
    pub fn id(&self) -> PeerId {
        self.0.session().id
    }

    /// Sends an event built by the gateway (not relayed); failures are counted and logged.
    pub fn emit(&self, event: &str, data: &impl Serialize) {
        let sent = match serde_json::value::to_raw_value(data) {
            Ok(raw) => self.0.emit_raw(event, &raw),
            Err(e) => {
                tracing::error!(event, error = %e, "event could not be encoded");
                Sent::Closed
            }
        };
        count_failure(sent, self.id(), event);
    }
}

/// Everything else a peer does is its transport's [`Link`].
impl std::ops::Deref for Peer {
    type Target = dyn Link;

    fn deref(&self) -> &dyn Link {
        &*self.0
    }
}

fn count_failure(sent: Sent, peer: PeerId, what: &str) {
    let reason = match sent {
        Sent::Ok => return,
        Sent::Full => "buffer_full",
        Sent::Closed => "closed",
    };
    ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => reason).increment(1);
    tracing::debug!(peer, what, reason, "emit failed");
}

/// Where one ack goes: implemented by each transport.
pub trait AckSink: Send {
    /// Sends the ack's one argument.
    fn send(self: Box<Self>, body: &RawValue) -> Sent;
}

/// The ack a client asked for with an event.
pub struct Ack(Box<dyn AckSink>);

impl Ack {
    /// An ack sent through `sink`.
    pub fn new(sink: impl AckSink + 'static) -> Self {
        Self(Box::new(sink))
    }

    /// Answers the client's ack; a failure (the socket is gone) is counted.
    pub fn send(self, body: &impl Serialize) {
        let sent = match serde_json::value::to_raw_value(body) {
            Ok(raw) => self.0.send(&raw),
            Err(e) => {
                tracing::error!(error = %e, "ack could not be encoded");
                Sent::Closed
            }
        };
        count_failure(sent, 0, "ack");
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
    /// The argument parsed, for MessagePack sessions.
    value: OnceLock<Value>,
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
            value: OnceLock::new(),
        }
    }

    /// The JSON text WebSocket frame of this event.
    pub fn frame(&self) -> &Bytes {
        self.frame
            .get_or_init(|| packet::event_raw(&self.name, self.json.get()))
    }

    /// The argument as a value (parsed once).
    pub fn value(&self) -> &Value {
        self.value
            .get_or_init(|| match serde_json::from_str(self.json.get()) {
                Ok(v) => v,
                Err(e) => {
                    // Valid JSON by construction; only a nesting past serde_json's limit fails.
                    ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode")
                        .increment(1);
                    tracing::error!(event = %self.name, error = %e, "event could not be read back for MessagePack");
                    Value::Null
                }
            })
    }

    /// The MessagePack WebSocket frame of this event.
    pub fn msgpack_frame(&self) -> &Bytes {
        self.msgpack
            .get_or_init(|| match msgpack::event(&self.name, self.value()) {
                Ok(frame) => frame,
                Err(e) => {
                    ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode")
                        .increment(1);
                    tracing::error!(event = %self.name, error = %e, "event could not be encoded as MessagePack");
                    Bytes::new()
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

/// The gateway's own transport, as a [`Link`].
impl Link for Conn<Arc<Session>> {
    fn session(&self) -> &Arc<Session> {
        self.user()
    }

    fn transport(&self) -> &'static str {
        Conn::transport(self)
    }

    fn sid(&self) -> String {
        Conn::sid(self).to_string()
    }

    fn is_open(&self) -> bool {
        Conn::is_open(self)
    }

    fn send(&self, ev: &Outgoing) -> Sent {
        Conn::send(self, ev.frame_for(self.codec()).clone(), 1)
    }

    fn send_all(&self, shared: &mut SharedFrames, events: &[Outgoing]) -> Sent {
        Conn::send(self, shared.get(self.codec(), events).clone(), events.len())
    }

    /// Replays are encoded for one socket, so they go uncompressed: compressing them would be
    /// work per socket, at the worst time (a reconnect storm).
    fn send_replay(&self, ev: &Outgoing) -> Sent {
        Conn::send_replay(self, ev.frame_for(self.codec().uncompressed()).clone())
    }

    /// The gateway's own per-socket packets go plain (see [`Link::send_replay`]).
    fn emit_raw(&self, event: &str, data: &RawValue) -> Sent {
        let codec = self.codec();
        let frame = if codec.msgpack {
            read_back(data).and_then(|v| codec.event(event, &v))
        } else {
            codec.event(event, &data)
        };
        match frame {
            Ok(frame) => Conn::send(self, frame, 0),
            Err(e) => {
                tracing::error!(event, error = %e, "event could not be encoded");
                Sent::Closed
            }
        }
    }

    fn disconnect(&self) {
        Conn::disconnect(self)
    }

    fn cut(&self) -> bool {
        Conn::cut(self, "buffer_full")
    }
}

/// An ack on the gateway's own transport: the session and the ack's id.
pub struct WsAck(pub Arc<Conn<Arc<Session>>>, pub u64);

impl AckSink for WsAck {
    fn send(self: Box<Self>, body: &RawValue) -> Sent {
        let codec = self.0.codec();
        let frame = if codec.msgpack {
            read_back(body).and_then(|v| codec.ack(self.1, &v))
        } else {
            codec.ack(self.1, &body)
        };
        match frame {
            Ok(frame) => self.0.send(frame, 0),
            Err(e) => {
                tracing::error!(error = %e, "ack could not be encoded");
                Sent::Closed
            }
        }
    }
}

/// `raw` as a value, for a MessagePack encoder: raw JSON means nothing to it (it would be
/// written as a string).
pub fn read_back(raw: &RawValue) -> Result<Value, crate::wire::codec::EncodeError> {
    Ok(serde_json::from_str(raw.get())?)
}

/// Connected peers by id, for the timers.
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<PeerId, Peer>>,
}

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Peer>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connected peer.
    pub fn insert(&self, peer: Peer) {
        self.lock().insert(peer.id(), peer);
    }

    /// Forgets a peer.
    pub fn remove(&self, id: PeerId) {
        self.lock().remove(&id);
    }

    /// The peer with this id, if still connected.
    pub fn get(&self, id: PeerId) -> Option<Peer> {
        self.lock().get(&id).cloned()
    }

    /// Every connected peer (the control API looks through them).
    pub fn all(&self) -> Vec<Peer> {
        self.lock().values().cloned().collect()
    }
}
