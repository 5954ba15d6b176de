//! All of the socketioxide glue: the `/` namespace's connect middleware and handlers, and
//! socketioxide's sockets as a [`Link`]. socketioxide carries long-polling sessions and the
//! sessions that upgrade from polling to WebSocket.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SendError, SocketError, SocketIo, TransportType};

use super::{dispatch, handshake, names, on_connect, on_disconnect, rooms, ConnectRefused};
use crate::drain::{ConnId, Connections};
use crate::metrics;
use crate::peer::session::Session;
use crate::peer::{read_back, Ack, AckSink, Link, Outgoing, Peer, Sent};
use crate::state::AppState;

/// Registers the gateway's handlers on socketioxide's `/` namespace (long-polling sessions and
/// those that upgrade from it).
pub fn register(io: &SocketIo, state: Arc<AppState>) {
    let st = state.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let st = st.clone();
        async move { sio_handshake(st, s, auth.ok()).await }
    };
    let st = state;
    let connected = move |s: SocketRef| {
        let st = st.clone();
        let entries = s
            .extensions
            .remove::<HandshakeEntries>()
            .map(|e| std::mem::take(&mut *e.0.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default();
        async move {
            if let Some(peer) = peer_of(&st, &s) {
                on_connect(st, peer, entries).await
            }
        }
    };
    io.ns("/", connected.with(middleware));
}

/// Automatic rooms a handshake prepared, carried from socketioxide's middleware to its connect
/// handler (extensions hold `Clone` values only, hence the shared cell).
#[derive(Clone)]
struct HandshakeEntries(Arc<std::sync::Mutex<Vec<rooms::Prepared>>>);

/// socketioxide's connect middleware: the handshake, then the event handlers, installed
/// before the client hears it is connected.
async fn sio_handshake(
    st: Arc<AppState>,
    s: SocketRef,
    auth: Option<Value>,
) -> Result<(), ConnectRefused> {
    let transport = match s.transport_type() {
        TransportType::Websocket => "websocket",
        TransportType::Polling => "polling",
    };
    let session = Session::new(transport);
    let id = session.id;
    s.extensions.insert(session);
    let peer = peer_of(&st, &s).ok_or(ConnectRefused("closed"))?;
    let entries = handshake(&st, &peer, auth).await.map_err(ConnectRefused)?;
    s.extensions
        .insert(HandshakeEntries(Arc::new(std::sync::Mutex::new(entries))));
    st.peers.insert(peer);
    {
        let st = st.clone();
        s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| async move {
            st.peers.remove(id);
            if let Some(peer) = peer_of(&st, &s) {
                on_disconnect(&st, &peer, disconnect_label(reason))
            }
        });
    }
    install(st, &s);
    Ok(())
}

fn disconnect_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "bad_packet",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "server_closing",
    }
}

/// Installs the event handlers on a socketioxide socket; each hands over to [`dispatch`].
fn install(st: Arc<AppState>, s: &SocketRef) {
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
                if let Some(peer) = peer_of(&st, &s) {
                    let msgpack = is_msgpack(&s);
                    let ack = Some(Ack::new(SioAck { ack, msgpack }));
                    dispatch(st.clone(), peer, name.to_owned(), d.ok(), ack);
                }
                std::future::ready(())
            },
        );
    }
}

/// The peer of a socketioxide socket whose handshake began (its session is in its extensions).
fn peer_of(st: &AppState, s: &SocketRef) -> Option<Peer> {
    let session = s.extensions.get::<Arc<Session>>()?;
    Some(Peer::new(Arc::new(SioLink {
        msgpack: is_msgpack(s),
        socket: s.clone(),
        session,
        connections: st.connections.clone(),
    })))
}

/// Whether a socketioxide socket belongs to the MessagePack parser's instance.
fn is_msgpack(s: &SocketRef) -> bool {
    s.req_parts()
        .uri
        .path()
        .starts_with(crate::wire::MSGPACK_PATH)
}

/// A socketioxide socket as a [`Link`].
struct SioLink {
    socket: SocketRef,
    /// The socket speaks MessagePack: it takes parsed values (socketioxide encodes for each
    /// socket, and a raw JSON value means nothing to its MessagePack parser).
    msgpack: bool,
    session: Arc<Session>,
    /// To cut an upgraded socket's TCP connection.
    connections: Arc<Connections>,
}

fn sent(r: Result<(), SendError>) -> Sent {
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

impl Link for SioLink {
    fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn transport(&self) -> &'static str {
        match self.socket.transport_type() {
            TransportType::Websocket => "websocket",
            TransportType::Polling => "polling",
        }
    }

    fn is_open(&self) -> bool {
        self.socket.connected()
    }

    fn send(&self, ev: &Outgoing) -> Sent {
        if self.msgpack {
            sent(self.socket.emit(&*ev.name, ev.value()))
        } else {
            sent(self.socket.emit(&*ev.name, &ev.json))
        }
    }

    fn send_replay(&self, ev: &Outgoing) -> Sent {
        // socketioxide's queue was sized for a whole replay (`max_buffer_size` in `run`).
        self.send(ev)
    }

    fn emit_raw(&self, event: &str, data: &RawValue) -> Sent {
        if !self.msgpack {
            return sent(self.socket.emit(event, data));
        }
        match read_back(data) {
            Ok(v) => sent(self.socket.emit(event, &v)),
            Err(e) => {
                tracing::error!(event, error = %e, "event could not be encoded");
                Sent::Closed
            }
        }
    }

    fn disconnect(&self) {
        if let Err(e) = self.socket.clone().disconnect() {
            tracing::debug!(error = %e, "disconnect failed");
        }
    }

    /// An upgraded socket's TCP connection is shut down; a long-polling socket, which has no
    /// connection of its own, gets a Socket.IO disconnect.
    fn cut(&self) -> bool {
        let transport = self.transport();
        let conn = self
            .socket
            .req_parts()
            .extensions
            .get::<axum::extract::ConnectInfo<ConnId>>()
            .map(|c| c.0);
        let cut = match (transport, conn) {
            ("websocket", Some(id)) => self.connections.close(id),
            _ => self.socket.clone().disconnect().is_ok(),
        };
        if cut {
            ::metrics::counter!(metrics::SLOW_CONSUMERS, "transport" => transport).increment(1);
            tracing::warn!(
                peer = self.session.id,
                transport,
                "slow consumer cut: its outgoing buffer was full"
            );
        }
        cut
    }
}

/// An ack on a socketioxide socket, in its parser's terms.
struct SioAck {
    ack: AckSender,
    msgpack: bool,
}

impl AckSink for SioAck {
    fn send(self: Box<Self>, body: &RawValue) -> Sent {
        if !self.msgpack {
            return sent(self.ack.send(body));
        }
        match read_back(body) {
            Ok(v) => sent(self.ack.send(&v)),
            Err(e) => {
                tracing::error!(error = %e, "ack could not be encoded");
                Sent::Closed
            }
        }
    }
}
