//! What both transports share, and all their users see: a connected client ([`Peer`]), where
//! its ack goes ([`Ack`]), an event encoded once for every peer ([`Outgoing`]), the registry of
//! connected peers, each one's [`session`] and the timers of all of them ([`deadlines`]).
//!
//! WebSocket sessions opened directly (the way production clients connect) run on the gateway's
//! own transport ([`crate::wire`]); long-polling sessions, and sessions that start on polling
//! and upgrade, run on socketioxide (its glue is `socket/sio.rs`). Each transport implements
//! [`Link`] once; the handlers, the relay and the timers see only a [`Peer`].

pub mod deadlines;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::metrics;
use crate::wire::Conn;
pub use crate::wire::Sent;
use session::Session;

/// Gateway-wide id of a connected client.
pub type PeerId = u64;

/// One transport's side of a connected client.
pub trait Link: Send + Sync + 'static {
    /// The client's session.
    fn session(&self) -> &Arc<Session>;
    /// `websocket` or `polling` now (a metric label).
    fn transport(&self) -> &'static str;
    /// Whether the client can still be written to.
    fn is_open(&self) -> bool;
    /// Sends a relayed event, refused ([`Sent::Full`]) when the client's queue is full.
    fn send(&self, ev: &Outgoing) -> Sent;
    /// Sends several relayed events of one room at once; `frames` holds their WebSocket frames
    /// back to back, for a transport that writes them in one go.
    fn send_all(&self, frames: &Bytes, events: &[Outgoing]) -> Sent {
        let _ = frames;
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

/// One event encoded once for every peer: its name and JSON (for socketioxide sockets) and the
/// complete WebSocket frame (for the gateway's own transport).
pub struct Outgoing {
    /// Event name.
    pub name: Arc<str>,
    /// The argument as JSON.
    pub json: Box<RawValue>,
    /// `42["name",json]` framed, built on first use.
    frame: std::sync::OnceLock<Bytes>,
}

impl Outgoing {
    /// An event to send.
    pub fn new(name: Arc<str>, json: Box<RawValue>) -> Self {
        Self {
            name,
            json,
            frame: std::sync::OnceLock::new(),
        }
    }

    /// The WebSocket frame of this event.
    pub fn frame(&self) -> &Bytes {
        self.frame
            .get_or_init(|| crate::wire::packet::event_raw(&self.name, self.json.get()))
    }
}

/// The gateway's own WebSocket transport, as a [`Link`].
impl Link for Conn<Arc<Session>> {
    fn session(&self) -> &Arc<Session> {
        self.user()
    }

    fn transport(&self) -> &'static str {
        "websocket"
    }

    fn is_open(&self) -> bool {
        Conn::is_open(self)
    }

    fn send(&self, ev: &Outgoing) -> Sent {
        Conn::send(self, ev.frame().clone(), 1)
    }

    fn send_all(&self, frames: &Bytes, events: &[Outgoing]) -> Sent {
        Conn::send(self, frames.clone(), events.len())
    }

    fn send_replay(&self, ev: &Outgoing) -> Sent {
        Conn::send_replay(self, ev.frame().clone())
    }

    fn emit_raw(&self, event: &str, data: &RawValue) -> Sent {
        Conn::send(self, crate::wire::packet::event_raw(event, data.get()), 0)
    }

    fn disconnect(&self) {
        Conn::disconnect(self)
    }

    fn cut(&self) -> bool {
        Conn::cut(self, "buffer_full")
    }
}

/// An ack on the gateway's own WebSocket transport: the session and the ack's id.
pub struct WsAck(pub Arc<Conn<Arc<Session>>>, pub u64);

impl AckSink for WsAck {
    fn send(self: Box<Self>, body: &RawValue) -> Sent {
        match crate::wire::packet::ack(self.1, &body) {
            Ok(frame) => self.0.send(frame, 0),
            Err(e) => {
                tracing::error!(error = %e, "ack could not be encoded");
                Sent::Closed
            }
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
}
