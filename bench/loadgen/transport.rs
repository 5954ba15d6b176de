//! How a generated connection reaches the server (`clients --transport`): a direct WebSocket,
//! long-polling only, or long-polling that upgrades to WebSocket the way the stock
//! `socket.io-client` does by default. Above this module a connection is a stream of Engine.IO
//! text packets in and out ([`Conn::recv`], [`Conn::send`]), whatever carries them.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::deflate::{self, Inflating};
use crate::polling::Polling;

/// The transports a connection can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// WebSocket from the first request (`transports: ["websocket"]`).
    Websocket,
    /// HTTP long-polling for the whole session (`transports: ["polling"]`).
    Polling,
    /// Long-polling first, then the WebSocket upgrade (`2probe`, `3probe`, `5`): the stock
    /// client's default.
    Upgrade,
}

impl Transport {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Polling => "polling",
            Transport::Upgrade => "upgrade",
        }
    }
}

/// Why a connection could not be made, or ended.
#[derive(Debug)]
pub enum ConnError {
    Io(String),
    Refused(String),
    Protocol(String),
    /// The server ended the connection (close frame, end of stream).
    Ended(&'static str),
    Timeout,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "io: {e}"),
            ConnError::Refused(e) => write!(f, "refused: {e}"),
            ConnError::Protocol(e) => write!(f, "protocol: {e}"),
            ConnError::Ended(why) => f.write_str(why),
            ConnError::Timeout => f.write_str("handshake timed out"),
        }
    }
}

/// An I/O error as a [`ConnError`].
pub fn io_err(e: impl std::fmt::Display) -> ConnError {
    ConnError::Io(e.to_string())
}

/// A WebSocket as the generator holds it (inflating when permessage-deflate was agreed).
pub type Ws = WebSocketStream<Inflating<TcpStream>>;

/// How to open connections.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    /// Which transport.
    pub transport: Transport,
    /// Offer permessage-deflate on WebSockets.
    pub deflate: bool,
    /// Read buffer of a WebSocket, and read size of an HTTP connection (bytes).
    pub read_buffer: usize,
}

fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer.max(256))
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// TCP connect to `target` from `source` (the kernel picks the port per destination:
/// IP_BIND_ADDRESS_NO_PORT, so each source reaches about 28k connections per server).
pub async fn connect_from(
    source: Option<IpAddr>,
    target: SocketAddr,
) -> Result<TcpStream, ConnError> {
    let socket = TcpSocket::new_v4().map_err(io_err)?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd and a pointer to an int of the stated size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io_err(format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(target)
        .await
        .map_err(|e| io_err(format!("connect {target}: {e}")))?;
    stream.set_nodelay(true).map_err(io_err)?;
    Ok(stream)
}

/// A WebSocket to the Engine.IO endpoint of `target`; `sid` joins an existing session (the
/// upgrade of a polling session).
async fn open_ws(
    dial: &Dial,
    source: Option<IpAddr>,
    target: SocketAddr,
    sid: Option<&str>,
) -> Result<Ws, ConnError> {
    let stream = connect_from(source, target).await?;
    let mut url = format!("ws://{target}/socket.io/?EIO=4&transport=websocket");
    if let Some(sid) = sid {
        url.push_str("&sid=");
        url.push_str(sid);
    }
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnError::Protocol(format!("request: {e}")))?;
    if dial.deflate {
        request.headers_mut().insert(
            "Sec-WebSocket-Extensions",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(deflate::OFFER),
        );
    }
    let (ws, response) = tokio_tungstenite::client_async_with_config(
        request,
        Inflating::new(stream, dial.deflate),
        Some(ws_config(dial.read_buffer)),
    )
    .await
    .map_err(|e| ConnError::Protocol(format!("upgrade: {e}")))?;
    if dial.deflate && !response.headers().contains_key("sec-websocket-extensions") {
        return Err(ConnError::Protocol(
            "permessage-deflate offered but not negotiated".into(),
        ));
    }
    Ok(ws)
}

enum Io {
    Ws(Ws),
    Polling(Polling),
}

/// One Engine.IO connection: text packets in and out.
pub struct Conn {
    /// Packets received and not yet handed out (a polling answer carries several).
    pending: VecDeque<Utf8Bytes>,
    io: Io,
}

impl Conn {
    /// Opens the Engine.IO session; the open packet is the first [`Conn::recv`]. With
    /// [`Transport::Upgrade`] the session is on polling until [`Conn::upgrade`].
    pub async fn open(
        dial: &Dial,
        source: Option<IpAddr>,
        target: SocketAddr,
    ) -> Result<Conn, ConnError> {
        let mut pending = VecDeque::new();
        let io = match dial.transport {
            Transport::Websocket => Io::Ws(open_ws(dial, source, target, None).await?),
            Transport::Polling | Transport::Upgrade => {
                Io::Polling(Polling::open(source, target, dial.read_buffer, &mut pending).await?)
            }
        };
        Ok(Conn { pending, io })
    }

    /// The next text packet. On polling, a long-poll GET when nothing is pending.
    pub async fn recv(&mut self) -> Result<Utf8Bytes, ConnError> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(p);
            }
            match &mut self.io {
                Io::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t),
                    Some(Ok(Message::Close(_))) => return Err(ConnError::Ended("close frame")),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(io_err(format!("read: {e}"))),
                    None => return Err(ConnError::Ended("eof")),
                },
                Io::Polling(p) => p.poll(&mut self.pending).await?,
            }
        }
    }

    /// Sends one packet (on polling: one POST).
    pub async fn send(&mut self, packet: String) -> Result<(), ConnError> {
        match &mut self.io {
            Io::Ws(ws) => ws.send(Message::text(packet)).await.map_err(io_err),
            Io::Polling(p) => p.post(&[&packet]).await,
        }
    }

    /// Moves a polling session to WebSocket as the stock client does: with a long-poll in
    /// flight, open the WebSocket with the session's `sid`, send `2probe`, wait for `3probe`,
    /// let the poll finish (the server answers it, with a `6` noop if it has nothing else),
    /// then send `5` and close the HTTP connection. Packets the poll brought stay pending, in
    /// order, ahead of what arrives on the WebSocket. A direct WebSocket is left as it is.
    pub async fn upgrade(self, dial: &Dial) -> Result<Conn, ConnError> {
        let Conn { mut pending, io } = self;
        let mut polling = match io {
            Io::Polling(p) => p,
            ws @ Io::Ws(_) => return Ok(Conn { pending, io: ws }),
        };
        polling.start_poll().await?;
        let (source, target) = polling.endpoints();
        let mut ws = open_ws(dial, source, target, Some(polling.sid())).await?;
        ws.send(Message::text("2probe")).await.map_err(io_err)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "3probe" => break,
                Some(Ok(Message::Text(t))) => {
                    return Err(ConnError::Protocol(format!(
                        "expected 3probe, got {:.60}",
                        t.as_str()
                    )))
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ConnError::Protocol(
                        "closed during the upgrade probe".into(),
                    ))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(io_err(format!("probe: {e}"))),
            }
        }
        polling.finish_poll(&mut pending).await?;
        ws.send(Message::text("5")).await.map_err(io_err)?;
        Ok(Conn {
            pending,
            io: Io::Ws(ws),
        })
    }
}
