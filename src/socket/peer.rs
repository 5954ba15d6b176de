//! One connected client, whichever transport carries it.
//!
//! WebSocket sessions opened directly (the way production clients connect) run on the gateway's
//! own transport ([`crate::wire`]); long-polling sessions, and sessions that start on polling
//! and upgrade, run on socketioxide. The handlers, the relay and the timers see only a [`Peer`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::{SendError, SocketError};

use super::session::Session;
use crate::metrics;
use crate::wire::codec::Codec;
use crate::wire::conn::Conn;
use crate::wire::{deflate, msgpack, packet};

/// Gateway-wide id of a connected client.
pub type PeerId = u64;

/// A connected client.
#[derive(Clone)]
pub enum Peer {
    /// A socketioxide socket (long-polling, or upgraded from it).
    Sio(SocketRef),
    /// A socket on the gateway's own WebSocket transport.
    Ws(Arc<Conn>),
}

/// Where an ack goes.
pub enum Ack {
    /// socketioxide's ack sender.
    Sio(AckSender),
    /// Ack `id` on a WebSocket session.
    Ws(Arc<Conn>, u64),
}

/// Outcome of handing one message to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written or queued.
    Ok,
    /// The peer's outgoing queue is full: it cannot keep up.
    Full,
    /// The peer is gone.
    Closed,
}

/// One event encoded once for every peer: its name and JSON (for socketioxide sockets) and the
/// complete WebSocket frames (for the gateway's own transport) in each shape a session may
/// have agreed to: JSON text or MessagePack, each plain or compressed. Every shape is built on
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
    /// The argument parsed, for socketioxide's MessagePack sessions.
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

/// Whether a socketioxide socket belongs to the MessagePack parser's instance.
fn sio_msgpack(s: &SocketRef) -> bool {
    s.req_parts()
        .uri
        .path()
        .starts_with(crate::wire::MSGPACK_PATH)
}

fn sio_result(r: Result<(), SendError>) -> Sent {
    match r {
        Ok(()) => Sent::Ok,
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Sent::Full,
        Err(SendError::Socket(SocketError::Closed)) => Sent::Closed,
        Err(SendError::Serialize(e)) => {
            tracing::error!(error = %e, "event could not be encoded");
            Sent::Closed
        }
    }
}

impl Peer {
    /// The peer's session (`None` for a socketioxide socket whose handshake did not finish).
    pub fn session(&self) -> Option<Arc<Session>> {
        match self {
            Peer::Sio(s) => s.extensions.get::<Arc<Session>>(),
            Peer::Ws(c) => Some(c.session().clone()),
        }
    }

    /// The peer's id (0 for a socket without a session, which never reaches the relay).
    pub fn id(&self) -> PeerId {
        match self {
            Peer::Sio(s) => s.extensions.get::<Arc<Session>>().map_or(0, |s| s.id),
            Peer::Ws(c) => c.session().id,
        }
    }

    /// `websocket` or `polling` (a metric label).
    pub fn transport(&self) -> &'static str {
        match self {
            Peer::Sio(s) => match s.transport_type() {
                socketioxide::TransportType::Websocket => "websocket",
                socketioxide::TransportType::Polling => "polling",
            },
            Peer::Ws(_) => "websocket",
        }
    }

    /// Sends a replayed event (history, or live events held while the socket entered a room):
    /// never refused for a full queue, since a replay is bounded by `GATEWAY_MAX_REPLAY`.
    /// Replays are encoded for one socket, so they go uncompressed: compressing them would be
    /// work per socket, at the worst time (a reconnect storm).
    pub fn send_replay(&self, ev: &Outgoing) -> Sent {
        match self {
            Peer::Sio(_) => self.send(ev),
            Peer::Ws(c) => c.send_replay(ev.frame_for(c.codec().uncompressed()).clone()),
        }
    }

    /// Whether the peer can still be written to.
    pub fn is_open(&self) -> bool {
        match self {
            Peer::Sio(s) => s.connected(),
            Peer::Ws(c) => c.is_open(),
        }
    }

    /// Sends a relayed event.
    pub fn send(&self, ev: &Outgoing) -> Sent {
        match self {
            // socketioxide encodes for each socket; a MessagePack socket takes the parsed value
            // (a raw JSON value means nothing to its parser).
            Peer::Sio(s) if sio_msgpack(s) => sio_result(s.emit(&*ev.name, ev.value())),
            Peer::Sio(s) => sio_result(s.emit(&*ev.name, &ev.json)),
            Peer::Ws(c) => c.send(ev.frame_for(c.codec()).clone(), 1),
        }
    }

    /// Sends an event built by the gateway (not relayed); failures are counted and logged.
    pub fn emit(&self, event: &str, data: &impl Serialize) {
        let sent = match self {
            Peer::Sio(s) => sio_result(s.emit(event, data)),
            Peer::Ws(c) => match c.codec().event(event, data) {
                Ok(frame) => c.send(frame, 0),
                Err(e) => {
                    tracing::error!(event, error = %e, "event could not be encoded");
                    Sent::Closed
                }
            },
        };
        let reason = match sent {
            Sent::Ok => return,
            Sent::Full => "buffer_full",
            Sent::Closed => "closed",
        };
        ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => reason).increment(1);
        tracing::debug!(peer = self.id(), event, reason, "emit failed");
    }

    /// Disconnects the client from the server side (the stock client stays offline until the
    /// application reconnects it): used when it failed to authenticate or its token expired.
    pub fn disconnect(&self) {
        match self {
            Peer::Sio(s) => {
                if let Err(e) = s.clone().disconnect() {
                    tracing::debug!(error = %e, "disconnect failed");
                }
            }
            Peer::Ws(c) => c.disconnect(),
        }
    }
}

impl Ack {
    /// Answers the client's ack.
    pub fn send(self, body: &impl Serialize) {
        match self {
            Ack::Sio(a) => {
                if let Err(e) = a.send(body) {
                    tracing::debug!(error = %e, "ack not sent");
                }
            }
            Ack::Ws(c, id) => match c.codec().ack(id, body) {
                Ok(frame) => {
                    if c.send(frame, 0) != Sent::Ok {
                        ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "closed")
                            .increment(1);
                        tracing::debug!(peer = c.session().id, "ack not sent: the socket is gone");
                    }
                }
                Err(e) => tracing::error!(error = %e, "ack could not be encoded"),
            },
        }
    }
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

    /// How many peers are connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
