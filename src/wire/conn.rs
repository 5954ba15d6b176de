//! One WebSocket session: a single task per connection that reads the client's frames, answers
//! the heartbeat and flushes whatever could not be written at once.
//!
//! Writes do not go through the task: whoever sends (the relay, a handler) writes straight to
//! the socket when nothing is queued before it, so a delivery costs one `write` and no task
//! wake-up. Only what the kernel does not take at once is queued, and the task writes the queue
//! out (several frames per `writev`) when the socket drains. An idle connection holds no read or
//! write buffer: reads go through a buffer on the stack and only an incomplete frame is kept.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::Codec;
use super::deflate::{InflateError, Inflater};
use super::frame::{self, Frame, FrameError, Opcode};
use super::msgpack;
use super::packet::{self, Incoming};
use super::{Handler, Sent};
use crate::drain::TrackedStream;
use crate::metrics;

/// How long a closing connection may take to flush what was queued before it.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Most frames written by one `writev`.
const MAX_IOV: usize = 64;
/// Most reads handled per wake-up, so one busy client cannot hold a worker thread.
const MAX_READS: usize = 16;
/// Frames beyond the live queue and a replay that a session may have queued (live events held
/// while it entered a room, the gateway's own packets) before it is cut.
const MAX_HELD_FRAMES: usize = 16_384;

/// A WebSocket session shared by its task and whoever writes to it. `U` is what the layer
/// above keeps per session (the transport never looks into it).
pub struct Conn<U> {
    stream: TrackedStream,
    out: Mutex<Out>,
    wake: Notify,
    user: U,
    sid: Box<str>,
    /// Parser and compression agreed at the handshake.
    codec: Codec,
    max_queue: u32,
    /// Most frames queued of any kind: the gateway's own packets (acks, pongs) and replays are
    /// not held to `max_queue`, but a client that sends requests and never reads the answers
    /// must not grow its queue without bound.
    max_frames: u32,
}

#[derive(Default)]
struct Out {
    /// Frames (or the unwritten rest of one) waiting for the socket to drain, with how many
    /// relayed events each carries.
    queue: VecDeque<(Bytes, usize)>,
    /// Relayed events in `queue` (what `GATEWAY_SOCKET_BUFFER` bounds).
    events: usize,
    /// No more writes: the session ended.
    closed: bool,
    /// Close once the queue is written (a server-side disconnect).
    closing: bool,
    /// Where the Socket.IO namespace connect stands.
    ns: Ns,
}

/// The Socket.IO namespace connect of a session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Ns {
    /// No connect packet yet (or the last one was refused).
    #[default]
    None,
    /// The handshake runs (it enters the automatic rooms before answering).
    Connecting,
    /// The client was told it is connected.
    Connected,
}

/// Why a session ended: the disconnect reason label, and the close frame to send if any.
struct Stop {
    reason: &'static str,
    close: Option<(u16, &'static str)>,
}

impl Stop {
    fn quiet(reason: &'static str) -> Self {
        Self {
            reason,
            close: None,
        }
    }

    fn protocol(reason: &'static str, code: u16, why: &'static str) -> Self {
        ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => why).increment(1);
        tracing::debug!(why, "closing a WebSocket session: protocol error");
        Self {
            reason,
            close: Some((code, why)),
        }
    }
}

/// A message being read: plain bytes, or a compressed message inflated frame by frame. The
/// inflater is created when a compressed message starts and dropped when it ends, so an idle
/// connection keeps none (see [`super::deflate`]).
enum Body {
    Plain(Vec<u8>),
    Deflated(Box<Inflater>),
}

impl Body {
    fn new(compressed: bool, max: usize) -> Self {
        if compressed {
            Body::Deflated(Box::new(Inflater::new(max)))
        } else {
            Body::Plain(Vec::new())
        }
    }

    fn push(&mut self, payload: &[u8], max: usize) -> Result<(), Stop> {
        match self {
            Body::Plain(buf) => {
                if buf.len() + payload.len() > max {
                    return Err(frame_error(FrameError::TooBig));
                }
                buf.extend_from_slice(payload);
                Ok(())
            }
            Body::Deflated(inflater) => inflater.push(payload).map_err(inflate_error),
        }
    }

    fn finish(self) -> Result<Vec<u8>, Stop> {
        match self {
            Body::Plain(buf) => Ok(buf),
            Body::Deflated(inflater) => inflater.finish().map_err(inflate_error),
        }
    }
}

fn inflate_error(e: InflateError) -> Stop {
    match e {
        InflateError::TooBig => frame_error(FrameError::TooBig),
        InflateError::Corrupt => Stop::protocol("bad_packet", 1007, "invalid_deflate_data"),
    }
}

/// State of the session task that nobody else touches.
struct Local {
    waiting_pong: bool,
    ping_sent: Instant,
    next_timer: Instant,
    opened: Instant,
    /// A fragmented (or compressed) message being assembled.
    message: Option<(Opcode, Body)>,
    /// An incomplete frame.
    partial: Vec<u8>,
}

impl<U: Send + Sync + 'static> Conn<U> {
    /// What the layer above keeps for this session.
    pub fn user(&self) -> &U {
        &self.user
    }

    /// The parser and compression this session agreed to.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` (carrying `events` live events) now if nothing is queued before it, else
    /// queues it. A queue that would pass its limit of events refuses it ([`Sent::Full`]); the
    /// gateway's own packets (`events == 0`) are never refused.
    pub fn send(&self, frame: Bytes, events: usize) -> Sent {
        self.push(frame, events, true)
    }

    /// Like [`Conn::send`], never refused: a replay (bounded by `GATEWAY_MAX_REPLAY`) goes out
    /// whole even to a socket whose queue is at its limit for live events.
    pub fn send_replay(&self, frame: Bytes) -> Sent {
        self.push(frame, 1, false)
    }

    fn push(&self, mut frame: Bytes, events: usize, limited: bool) -> Sent {
        let mut out = self.lock();
        if out.closed || out.closing {
            return Sent::Closed;
        }
        if !out.queue.is_empty() {
            if limited && events > 0 && out.events + events > self.max_queue as usize {
                return Sent::Full;
            }
            if out.queue.len() >= self.max_frames as usize {
                drop(out);
                self.cut("frame_limit");
                return Sent::Full;
            }
            out.events += events;
            out.queue.push_back((frame, events));
            return Sent::Ok;
        }
        match self.stream.tcp().try_write(&frame) {
            Ok(n) if n == frame.len() => return Sent::Ok,
            Ok(n) => frame.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                out.closed = true;
                return Sent::Closed;
            }
        }
        out.events += events;
        out.queue.push_back((frame, events));
        drop(out);
        self.wake.notify_one();
        Sent::Ok
    }

    /// Ends the session from the server side: a Socket.IO disconnect, then a close frame once
    /// everything queued before it is written.
    pub fn disconnect(&self) {
        self.send(self.codec.disconnect(), 0);
        self.lock().closing = true;
        self.wake.notify_one();
    }

    /// Writes as much of the queue as the socket takes. `Ok(true)` when it is empty.
    fn flush(&self) -> io::Result<bool> {
        let mut out = self.lock();
        while !out.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = out
                .queue
                .iter()
                .take(MAX_IOV)
                .map(|(b, _)| IoSlice::new(b))
                .collect();
            let written = match self.stream.tcp().try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    out.closed = true;
                    return Err(e);
                }
            };
            drop(slices);
            let mut left = written;
            while left > 0 {
                let Some((head, events)) = out.queue.front_mut() else {
                    break;
                };
                if head.len() <= left {
                    left -= head.len();
                    let events = *events;
                    out.events -= events;
                    out.queue.pop_front();
                } else {
                    head.advance(left);
                    left = 0;
                }
            }
        }
        if out.queue.capacity() > 8 {
            // Give back what a burst grew; an idle session keeps no queue.
            out.queue = VecDeque::new();
        }
        Ok(true)
    }

    /// Shuts the connection down (both directions) as one that cannot keep up; the session's
    /// task then ends it. The client reconnects and recovers from history. False if the session
    /// had ended already.
    pub fn cut(&self, why: &'static str) -> bool {
        let first = {
            let mut out = self.lock();
            !std::mem::replace(&mut out.closed, true)
        };
        if first {
            self.stream.close();
            ::metrics::counter!(metrics::SLOW_CONSUMERS, "transport" => "websocket").increment(1);
            let what = match why {
                "frame_limit" => "slow consumer cut: too many frames queued",
                _ => "slow consumer cut: its outgoing buffer was full",
            };
            tracing::warn!(conn = self.stream.id(), why, "{what}");
        }
        first
    }

    /// Whether the session still takes writes.
    pub fn is_open(&self) -> bool {
        let out = self.lock();
        !out.closed && !out.closing
    }

    fn closing(&self) -> bool {
        self.lock().closing
    }
}

/// Runs a WebSocket session: writes `response` (the 101 answering the upgrade) followed by the
/// Engine.IO open packet; `early` holds bytes the client sent after its request, if any.
pub async fn serve<H: Handler>(
    h: Arc<H>,
    stream: TrackedStream,
    response: String,
    early: Vec<u8>,
    codec: Codec,
) {
    let cfg = h.settings();
    let conn = Arc::new(Conn {
        stream,
        out: Mutex::new(Out::default()),
        wake: Notify::new(),
        user: h.new_user(),
        sid: super::new_sid().into_boxed_str(),
        codec,
        max_queue: u32::try_from(cfg.socket_buffer).unwrap_or(u32::MAX),
        max_frames: u32::try_from(cfg.socket_buffer + cfg.max_replay + MAX_HELD_FRAMES)
            .unwrap_or(u32::MAX),
    });
    let interval = cfg.ping_interval;
    let now = Instant::now();
    let mut local = Local {
        waiting_pong: false,
        ping_sent: now,
        next_timer: now + interval.min(cfg.connect_timeout),
        opened: now,
        message: None,
        partial: early,
    };
    let open = packet::open(
        &conn.sid,
        interval.as_millis() as u64,
        cfg.ping_timeout.as_millis() as u64,
        cfg.max_packet,
    );
    let mut greeting = bytes::BytesMut::with_capacity(response.len() + open.len());
    greeting.extend_from_slice(response.as_bytes());
    greeting.extend_from_slice(&open);
    drop(response);
    conn.send(greeting.freeze(), 0);
    let stop = match conn.decode_partial(&*h, &mut local) {
        Err(stop) => stop,
        Ok(()) => conn.run(&*h, &mut local).await,
    };
    conn.finish(&*h, stop).await;
}

impl<U: Send + Sync + 'static> Conn<U> {
    async fn run<H: Handler<User = U>>(self: &Arc<Self>, h: &H, l: &mut Local) -> Stop {
        let tcp = self.stream.tcp();
        let mut backlog = false;
        loop {
            tokio::select! {
                ready = tcp.readable() => {
                    if ready.is_err() {
                        return Stop::quiet("transport_error");
                    }
                    if let Err(stop) = self.read_available(h, l) {
                        return stop;
                    }
                }
                _ = self.wake.notified() => {
                    match self.flush() {
                        Ok(empty) => backlog = !empty,
                        Err(_) => return Stop::quiet("transport_error"),
                    }
                    if !backlog && self.closing() {
                        return Stop { reason: "server_disconnect", close: Some((1000, "")) };
                    }
                }
                ready = tcp.writable(), if backlog => {
                    if ready.is_err() {
                        return Stop::quiet("transport_error");
                    }
                    match self.flush() {
                        Ok(empty) => backlog = !empty,
                        Err(_) => return Stop::quiet("transport_error"),
                    }
                    if !backlog && self.closing() {
                        return Stop { reason: "server_disconnect", close: Some((1000, "")) };
                    }
                }
                _ = tokio::time::sleep_until(l.next_timer) => {
                    if let Some(stop) = self.on_timer(h, l) {
                        return stop;
                    }
                }
            }
        }
    }

    fn on_timer<H: Handler<User = U>>(&self, h: &H, l: &mut Local) -> Option<Stop> {
        let now = Instant::now();
        if self.ns() == Ns::None && now.duration_since(l.opened) >= h.settings().connect_timeout {
            return Some(Stop::protocol("connect_timeout", 1008, "connect_timeout"));
        }
        if l.waiting_pong {
            return Some(Stop::quiet("heartbeat_timeout"));
        }
        self.send(packet::ping(), 0);
        l.waiting_pong = true;
        l.ping_sent = now;
        l.next_timer = now + h.settings().ping_timeout;
        None
    }

    /// Reads what the socket has (through a stack buffer) and handles every complete frame.
    fn read_available<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
    ) -> Result<(), Stop> {
        let mut buf = [0u8; 8192];
        for _ in 0..MAX_READS {
            let n = match self.stream.tcp().try_read(&mut buf) {
                Ok(0) => return Err(Stop::quiet("transport_close")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Stop::quiet("transport_error")),
            };
            if l.partial.is_empty() {
                let used = self.decode_all(h, l, &buf[..n])?;
                l.partial.extend_from_slice(&buf[used..n]);
            } else {
                l.partial.extend_from_slice(&buf[..n]);
                self.decode_partial(h, l)?;
            }
        }
        Ok(())
    }

    /// Handles the complete frames at the start of the kept partial bytes.
    fn decode_partial<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
    ) -> Result<(), Stop> {
        if l.partial.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut l.partial);
        let used = self.decode_all(h, l, &data)?;
        if used < data.len() {
            l.partial = data[used..].to_vec();
        }
        Ok(())
    }

    /// Handles every complete frame in `data`; returns how many bytes they used.
    fn decode_all<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
        data: &[u8],
    ) -> Result<usize, Stop> {
        let max = h.settings().max_packet as usize;
        let mut at = 0;
        loop {
            match frame::decode(&data[at..], max, self.codec.deflate_min.is_some()) {
                Ok(Some((f, used))) => {
                    at += used;
                    self.on_frame(h, l, f, max)?;
                }
                Ok(None) => return Ok(at),
                Err(e) => return Err(frame_error(e)),
            }
        }
    }

    fn on_frame<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
        f: Frame,
        max: usize,
    ) -> Result<(), Stop> {
        let (opcode, payload) = match f.opcode {
            Opcode::Ping => {
                self.send(frame::encode(Opcode::Pong, &f.payload), 0);
                return Ok(());
            }
            Opcode::Pong => return Ok(()),
            Opcode::Close => {
                return Err(Stop {
                    reason: "transport_close",
                    close: Some((1000, "")),
                })
            }
            Opcode::Continuation => {
                let Some((opcode, mut body)) = l.message.take() else {
                    return Err(frame_error(FrameError::Protocol(
                        "continuation_without_message",
                    )));
                };
                body.push(&f.payload, max)?;
                if !f.fin {
                    l.message = Some((opcode, body));
                    return Ok(());
                }
                (opcode, body.finish()?)
            }
            opcode => {
                if l.message.is_some() {
                    return Err(frame_error(FrameError::Protocol("interleaved_message")));
                }
                if f.fin && !f.rsv1 {
                    (opcode, f.payload)
                } else {
                    let mut body = Body::new(f.rsv1, max);
                    body.push(&f.payload, max)?;
                    if !f.fin {
                        l.message = Some((opcode, body));
                        return Ok(());
                    }
                    (opcode, body.finish()?)
                }
            }
        };
        let parsed = match opcode {
            // Engine.IO over WebSocket: a binary message is a message packet's raw data.
            Opcode::Binary if self.codec.msgpack => msgpack::parse(&payload),
            Opcode::Binary => return Err(Stop::protocol("bad_packet", 1003, "binary_message")),
            _ => match String::from_utf8(payload) {
                Ok(text) => packet::parse(&text),
                Err(_) => return Err(Stop::protocol("bad_packet", 1007, "invalid_utf8")),
            },
        };
        match parsed {
            Ok(p) => self.on_packet(h, l, p),
            Err(e) => Err(Stop::protocol("bad_packet", 1002, e.0)),
        }
    }

    fn on_packet<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
        p: Incoming,
    ) -> Result<(), Stop> {
        match p {
            Incoming::Pong => {
                if l.waiting_pong {
                    l.waiting_pong = false;
                    l.next_timer = l.ping_sent + h.settings().ping_interval;
                }
            }
            Incoming::Ping => {
                self.send(packet::pong(), 0);
            }
            Incoming::Noop | Incoming::Ack => {}
            Incoming::Close => return Err(Stop::quiet("transport_close")),
            Incoming::Disconnect => return Err(Stop::quiet("client_disconnect")),
            Incoming::Connect { nsp, auth } => {
                if nsp != "/" {
                    self.send(self.codec.connect_error(&nsp, "Invalid namespace"), 0);
                } else if !self.start_connect() {
                    tracing::debug!(peer = self.stream.id(), "duplicate connect packet ignored");
                } else {
                    h.connect(self.clone(), auth);
                }
            }
            Incoming::Event {
                nsp,
                ack,
                name,
                data,
            } => {
                if nsp != "/" || self.ns() != Ns::Connected {
                    ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => "event_before_connect")
                        .increment(1);
                    tracing::debug!(peer = self.stream.id(), event = %name, "event before the namespace connect dropped");
                    return Ok(());
                }
                h.event(self, name, data, ack);
            }
        }
        Ok(())
    }

    /// Ends the session: no more writes, a close frame if one is due, the TCP connection shut
    /// down, and the socket's rooms and timers released.
    async fn finish<H: Handler<User = U>>(self: &Arc<Self>, h: &H, stop: Stop) {
        if let Some((code, why)) = stop.close {
            let frame = frame::encode_close(code, why);
            // Queued behind whatever is still unwritten; `flush` ignores the closing flags.
            self.lock().queue.push_back((frame, 0));
            let deadline = Instant::now() + CLOSE_FLUSH;
            while let Ok(false) = self.flush() {
                if tokio::time::timeout_at(deadline, self.stream.tcp().writable())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let connected = {
            let mut out = self.lock();
            out.closed = true;
            out.queue = VecDeque::new();
            out.events = 0;
            out.ns == Ns::Connected
        };
        self.stream.close();
        if connected {
            h.closed(self, stop.reason);
        }
    }

    fn ns(&self) -> Ns {
        self.lock().ns
    }

    /// Marks a connect as begun; false if one already is (or is done).
    fn start_connect(&self) -> bool {
        let mut out = self.lock();
        let first = out.ns == Ns::None;
        if first {
            out.ns = Ns::Connecting;
        }
        first
    }

    /// Answers the connect packet handed to [`Handler::connect`]: the client is connected.
    /// False if the session ended meanwhile: [`Handler::closed`] will not be called, so the
    /// caller releases what it took for the session.
    pub fn accept_connect(&self) -> bool {
        {
            let mut out = self.lock();
            if out.closed {
                return false;
            }
            out.ns = Ns::Connected;
        }
        self.send(self.codec.connected(&self.sid), 0);
        true
    }

    /// Refuses the connect packet handed to [`Handler::connect`] with `code` (the client's
    /// `connect_error` message); the client may try again.
    pub fn refuse_connect(&self, code: &str) {
        self.lock().ns = Ns::None;
        self.send(self.codec.connect_error("/", code), 0);
    }
}

fn frame_error(e: FrameError) -> Stop {
    Stop::protocol("bad_packet", e.close_code(), e.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_compression_adds_to_a_connection_takes_no_room() {
        // The message being read, kept in every session's task: the compressed variant is
        // boxed, so the slot is as big as a plain buffer's.
        assert_eq!(
            std::mem::size_of::<Option<(Opcode, Body)>>(),
            std::mem::size_of::<Option<(Opcode, Vec<u8>)>>()
        );
        // The codec and the two limits fit where the two `usize` limits were.
        assert!(std::mem::size_of::<Codec>() + 2 * std::mem::size_of::<u32>() <= 16);
    }
}
