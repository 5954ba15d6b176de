//! One session: a single task per connection that reads the client's frames, answers the
//! heartbeat and flushes whatever could not be written at once.
//!
//! A session that starts on long-polling ([`super::polling`]) has no socket yet: what is sent
//! to it is queued, as the same WebSocket frames, and a pending GET takes them. When the client
//! upgrades, the WebSocket becomes the session's socket ([`Conn::take_over`]) and the queue is
//! written to it in order: the session, its rooms and its queue live on, unchanged.
//!
//! Writes do not go through the task: whoever sends (the relay, a handler) writes straight to
//! the socket when nothing is queued before it, so a delivery costs one `write` and no task
//! wake-up. Only what the kernel does not take at once is queued, and the task writes the queue
//! out (several frames per `writev`) when the socket drains. An idle connection holds no read or
//! write buffer: reads go through a buffer on the stack and only an incomplete frame is kept.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::Codec;
use super::deflate::{InflateError, Inflater};
use super::frame::{self, Frame, FrameError, Opcode};
use super::msgpack;
use super::packet::{self, Incoming, PacketError};
use super::{Handler, Sent};
use crate::drain::TrackedStream;
use crate::metrics;

/// How long a closing connection may take to flush what was queued before it.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Most frames written by one `writev`.
const MAX_IOV: usize = 64;
/// Most reads handled per wake-up, so one busy client cannot hold a worker thread.
const MAX_READS: usize = 16;
/// How long a WebSocket opened to upgrade a long-polling session may take to complete the
/// probe and the upgrade (engine.io's default).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames beyond the live queue and a replay that a session may have queued (live events held
/// while it entered a room, the gateway's own packets) before it is cut.
const MAX_HELD_FRAMES: usize = 16_384;

/// A WebSocket session shared by its task and whoever writes to it. `U` is what the layer
/// above keeps per session (the transport never looks into it).
pub struct Conn<U> {
    /// The WebSocket: from the start for a direct session, from the upgrade for a session that
    /// started on long-polling.
    stream: OnceLock<TrackedStream>,
    out: Mutex<Out>,
    wake: Notify,
    user: U,
    sid: Box<str>,
    /// Parser and compression ([`Codec::pack`]): the parser is chosen at the handshake,
    /// compression when the WebSocket is opened.
    codec: AtomicU64,
    max_queue: u32,
    /// The session started on long-polling (it is in the handler's [`super::polling::Polls`]).
    born_polling: bool,
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
    /// While the session is on long-polling (`None` on a WebSocket).
    poll: Option<Box<PollOut>>,
}

/// The long-polling side of a session that has not upgraded (yet).
#[derive(Default)]
struct PollOut {
    /// Wakes the pending GET.
    ready: Arc<Notify>,
    /// A GET is pending.
    getting: bool,
    /// The client answered the last ping (by POST).
    ponged: bool,
    /// How far a WebSocket got in taking the session over.
    upgrade: Upgrade,
    /// Why a request ended the session.
    ended: Option<&'static str>,
}

/// How far a WebSocket got in taking a long-polling session over.
#[derive(Default)]
enum Upgrade {
    /// Not at all (or its upgrade failed): a GET waits for something to carry.
    #[default]
    None,
    /// It completed the probe: a GET is answered at once (a noop when nothing waits) so the
    /// client can pause polling and finish the upgrade; `noop` until the GET pending when the
    /// probe came was answered with one.
    Probed { noop: bool },
    /// It took over, with the bytes that followed its upgrade packet: the session's task
    /// collects them and drops the long-polling side.
    Done(Vec<u8>),
}

impl PollOut {
    /// A WebSocket took the session over.
    fn upgraded(&self) -> bool {
        matches!(self.upgrade, Upgrade::Done(_))
    }
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
pub(super) struct Stop {
    pub(super) reason: &'static str,
    close: Option<(u16, &'static str)>,
}

impl Stop {
    pub(super) fn quiet(reason: &'static str) -> Self {
        Self {
            reason,
            close: None,
        }
    }

    /// A normal end, with a normal close frame.
    fn closed(reason: &'static str) -> Self {
        Self {
            reason,
            close: Some((1000, "")),
        }
    }

    pub(super) fn protocol(reason: &'static str, code: u16, why: &'static str) -> Self {
        ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => why).increment(1);
        tracing::debug!(why, "closing a WebSocket session: protocol error");
        Self {
            reason,
            close: Some((code, why)),
        }
    }
}

/// A packet the client may not send ends its session (close 1002).
impl From<PacketError> for Stop {
    fn from(e: PacketError) -> Self {
        Stop::protocol("bad_packet", 1002, e.0)
    }
}

/// So does a frame it may not send, with the close code for why.
impl From<FrameError> for Stop {
    fn from(e: FrameError) -> Self {
        let (code, why) = e.close();
        Stop::protocol("bad_packet", code, why)
    }
}

/// And a compressed message that is too big once inflated (1009) or does not inflate (1007).
impl From<InflateError> for Stop {
    fn from(e: InflateError) -> Self {
        match e {
            InflateError::TooBig => FrameError::TooBig.into(),
            InflateError::Corrupt => Stop::protocol("bad_packet", 1007, "invalid_deflate_data"),
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
    fn push(&mut self, payload: &[u8], max: usize) -> Result<(), Stop> {
        match self {
            Body::Plain(buf) => {
                if buf.len() + payload.len() > max {
                    return Err(FrameError::TooBig.into());
                }
                buf.extend_from_slice(payload);
            }
            Body::Deflated(inflater) => inflater.push(payload)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>, Stop> {
        match self {
            Body::Plain(buf) => Ok(buf),
            Body::Deflated(inflater) => Ok(inflater.finish()?),
        }
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

impl Local {
    /// The client answered the last ping: the next one is due a ping interval after it.
    fn ponged(&mut self, ping_interval: Duration) {
        if self.waiting_pong {
            self.waiting_pong = false;
            self.next_timer = self.ping_sent + ping_interval;
        }
    }
}

impl<U: Send + Sync + 'static> Conn<U> {
    fn new<H: Handler<User = U>>(h: &H, stream: Option<TrackedStream>, codec: Codec) -> Self {
        let cfg = h.settings();
        let polling = stream.is_none();
        Conn {
            stream: stream.map_or_else(OnceLock::new, OnceLock::from),
            out: Mutex::new(Out {
                poll: polling.then(Box::default),
                ..Out::default()
            }),
            wake: Notify::new(),
            user: h.new_user(polling),
            sid: super::new_sid().into_boxed_str(),
            codec: AtomicU64::new(codec.pack()),
            max_queue: u32::try_from(cfg.socket_buffer).unwrap_or(u32::MAX),
            born_polling: polling,
            max_frames: u32::try_from(cfg.socket_buffer + cfg.max_replay + MAX_HELD_FRAMES)
                .unwrap_or(u32::MAX),
        }
    }

    /// What the layer above keeps for this session.
    pub fn user(&self) -> &U {
        &self.user
    }

    /// The Engine.IO session id the client knows.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The parser and compression this session agreed to.
    pub fn codec(&self) -> Codec {
        Codec::unpack(self.codec.load(Ordering::Acquire))
    }

    /// `websocket` or `polling`: where the session is now.
    pub fn transport(&self) -> &'static str {
        self.stream.get().map_or("polling", |_| "websocket")
    }

    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` (carrying `events` live events) now if nothing is queued before it, else
    /// queues it. A queue that would pass its limit of events refuses it ([`Sent::Full`]); the
    /// gateway's own packets (`events == 0`) are never refused. On long-polling everything is
    /// queued for the next GET.
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
        // A session on long-polling has no socket yet (one that upgraded has it from then on).
        let stream = match self.stream.get() {
            Some(stream) if out.queue.is_empty() => stream,
            stream => {
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
                if let Some(poll) = out.poll.as_ref().filter(|_| stream.is_none()) {
                    poll.ready.notify_one();
                }
                return Sent::Ok;
            }
        };
        match stream.tcp().try_write(&frame) {
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
    /// everything queued before it is written (on long-polling: once a GET took it).
    pub fn disconnect(&self) {
        self.send(self.codec().disconnect(), 0);
        self.lock().closing = true;
        self.wake.notify_one();
    }

    /// Writes as much of the queue as the socket takes. `Ok(true)` when it is empty.
    fn flush(&self) -> io::Result<bool> {
        let Some(stream) = self.stream.get() else {
            return Ok(true);
        };
        let mut guard = self.lock();
        let out = &mut *guard;
        while !out.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = out
                .queue
                .iter()
                .take(MAX_IOV)
                .map(|(b, _)| IoSlice::new(b))
                .collect();
            let mut left = match stream.tcp().try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    out.closed = true;
                    return Err(e);
                }
            };
            drop(slices);
            while let Some((head, events)) = out.queue.front_mut().filter(|_| left > 0) {
                if head.len() > left {
                    head.advance(left);
                    break;
                }
                left -= head.len();
                out.events -= *events;
                out.queue.pop_front();
            }
        }
        if out.queue.capacity() > 8 {
            // Give back what a burst grew; an idle session keeps no queue.
            out.queue = VecDeque::new();
        }
        Ok(true)
    }

    /// Shuts the connection down (both directions) as one that cannot keep up; the session's
    /// task then ends it (a long-polling session's pending GET gets the Engine.IO close). The
    /// client reconnects and recovers from history. False if the session had ended already.
    pub fn cut(&self, why: &'static str) -> bool {
        let first = self.end("transport_error");
        if first {
            let transport = self.transport();
            match self.stream.get() {
                Some(stream) => stream.close(),
                None => self.wake.notify_one(),
            }
            ::metrics::counter!(metrics::SLOW_CONSUMERS, "transport" => transport).increment(1);
            let what = match why {
                "frame_limit" => "slow consumer cut: too many frames queued",
                _ => "slow consumer cut: its outgoing buffer was full",
            };
            tracing::warn!(sid = %self.sid, transport, why, "{what}");
        }
        first
    }

    /// Whether the session still takes writes.
    pub fn is_open(&self) -> bool {
        let out = self.lock();
        !out.closed && !out.closing
    }

    /// Whether the session ended (its task may not have released it yet).
    pub fn has_ended(&self) -> bool {
        self.lock().closed
    }

    /// Ends a long-polling session because of a request (`reason` is the disconnect label):
    /// its pending GET gets the Engine.IO close, later requests an unknown session.
    pub(super) fn end_polling(&self, reason: &'static str) {
        if self.end(reason) {
            self.wake.notify_one();
        }
    }

    /// Takes no more writes, and has a pending GET answer with the Engine.IO close (`reason`:
    /// the disconnect label). False if the session had ended already.
    fn end(&self, reason: &'static str) -> bool {
        let mut out = self.lock();
        let first = !std::mem::replace(&mut out.closed, true);
        if let Some(poll) = out.poll.as_mut().filter(|_| first) {
            poll.ended = Some(reason);
            poll.ready.notify_one();
        }
        first
    }

    /// Records a pong that came by POST; the session's task reads it at its next timer.
    pub(super) fn polled_pong(&self) {
        if let Some(poll) = self.lock().poll.as_mut() {
            poll.ponged = true;
        }
    }

    /// Starts a GET, which ends when the [`Get`] is dropped; `None` when one is pending
    /// already or the session is not on long-polling.
    pub(super) fn begin_get(&self) -> Option<Get<'_, U>> {
        let mut out = self.lock();
        let poll = out.poll.as_mut().filter(|p| !p.getting && !p.upgraded())?;
        poll.getting = true;
        Some(Get(self, poll.ready.clone()))
    }

    /// Whether a GET is pending.
    pub(super) fn is_getting(&self) -> bool {
        self.lock().poll.as_ref().is_some_and(|p| p.getting)
    }

    /// What a pending GET answers now.
    pub(super) fn poll_now(&self) -> Polled {
        let mut out = self.lock();
        if !out.queue.is_empty() {
            let taken = std::mem::take(&mut out.queue);
            out.events = 0;
            if out.closing {
                // The task ends a closing session once its queue is out.
                self.wake.notify_one();
            }
            return Polled::Frames(taken);
        }
        if out.closed {
            return Polled::Packet(b"1");
        }
        match out.poll.as_mut().map(|p| &mut p.upgrade) {
            Some(Upgrade::None) => Polled::Wait,
            Some(Upgrade::Probed { noop: false }) => Polled::Upgrading,
            Some(Upgrade::Probed { noop }) => {
                *noop = false;
                Polled::Packet(b"6")
            }
            Some(Upgrade::Done(_)) | None => Polled::Packet(b"6"),
        }
    }
}

/// What a long-polling GET answers.
pub(super) enum Polled {
    /// The queued frames.
    Frames(VecDeque<(Bytes, usize)>),
    /// An Engine.IO packet: the close once the session ended, a noop while a WebSocket takes
    /// it over (so the client can pause polling).
    Packet(&'static [u8]),
    /// Nothing yet.
    Wait,
    /// Nothing yet, and a WebSocket completed the probe: the client is about to pause polling,
    /// so a GET does not wait long.
    Upgrading,
}

/// A pending GET of a long-polling session, with the notifier that wakes it; it ends when this
/// is dropped (answered, or dropped by a client that went away).
pub(super) struct Get<'a, U: Send + Sync + 'static>(&'a Conn<U>, pub(super) Arc<Notify>);

impl<U: Send + Sync + 'static> Drop for Get<'_, U> {
    fn drop(&mut self) {
        if let Some(poll) = self.0.lock().poll.as_mut() {
            poll.getting = false;
        }
    }
}

/// Runs the WebSocket of an agreed handshake (`response`: the 101 to write first, empty when
/// the HTTP server sent it; `early`: bytes the client sent after its request, if any): the
/// upgrade of its long-polling `session`, or a new session, greeted with the Engine.IO open
/// packet written with the 101.
pub async fn serve<H: Handler>(
    h: Arc<H>,
    stream: TrackedStream,
    response: String,
    early: Vec<u8>,
    codec: Codec,
    session: Option<Arc<Conn<H::User>>>,
) {
    if let Some(conn) = session {
        let max = h.settings().max_packet as usize;
        return conn.take_over(stream, response, early, codec, max).await;
    }
    let conn = Arc::new(Conn::new(&*h, Some(stream), codec));
    let open = packet::open(&conn.sid, false, h.settings());
    conn.send(Bytes::from([response.as_bytes(), &open].concat()), 0);
    // Neither is kept for the session.
    drop((response, open));
    conn.drive(h, early).await;
}

/// Starts a long-polling session: registers it, starts its task and returns the Engine.IO
/// open packet framed (the handshake GET answers with its payload).
pub fn start_polling<H: Handler>(h: &Arc<H>, codec: Codec) -> Bytes {
    let conn = Arc::new(Conn::new(&**h, None, codec));
    let open = packet::open(&conn.sid, true, h.settings());
    h.polls().insert(conn.clone());
    tokio::spawn(conn.drive(h.clone(), Vec::new()));
    open
}

impl<U: Send + Sync + 'static> Conn<U> {
    /// The session's task, from its start to its end (and through an upgrade).
    async fn drive<H: Handler<User = U>>(self: Arc<Self>, h: Arc<H>, early: Vec<u8>) {
        let (cfg, now) = (h.settings(), Instant::now());
        let mut local = Local {
            waiting_pong: false,
            ping_sent: now,
            next_timer: now + cfg.ping_interval.min(cfg.connect_timeout),
            opened: now,
            message: None,
            partial: early,
        };
        let Err(stop) = async {
            if self.stream.get().is_none() {
                self.poll_phase(&*h, &mut local).await?;
            }
            self.decode(&*h, &mut local, &[])?;
            self.run(&*h, &mut local).await
        }
        .await;
        self.finish(&*h, stop).await;
    }

    /// The task of a long-polling session: the heartbeat, until the session ends (`Err`) or a
    /// WebSocket takes it over (`Ok`, with the bytes that followed the upgrade in `partial`).
    async fn poll_phase<H: Handler<User = U>>(&self, h: &H, l: &mut Local) -> Result<(), Stop> {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(l.next_timer) => {
                    // A pong that came by POST.
                    if self.lock().poll.as_mut().is_some_and(|p| std::mem::take(&mut p.ponged)) {
                        l.ponged(h.settings().ping_interval);
                    }
                    if l.next_timer <= Instant::now() {
                        self.on_timer(h, l).inspect_err(|stop| self.end_polling(stop.reason))?;
                    }
                }
            }
            let mut out = self.lock();
            if out.closed {
                let reason = out.poll.as_ref().and_then(|p| p.ended);
                return Err(Stop::quiet(reason.unwrap_or("transport_close")));
            }
            if out.closing && out.queue.is_empty() {
                drop(out);
                self.end_polling("server_disconnect");
                return Err(Stop::quiet("server_disconnect"));
            }
            if let Some(poll) = out.poll.take_if(|p| p.upgraded()) {
                drop(out);
                if poll.ponged {
                    l.ponged(h.settings().ping_interval);
                }
                // A GET still pending answers with a noop.
                poll.ready.notify_one();
                if let Upgrade::Done(early) = poll.upgrade {
                    l.partial = early;
                }
                return Ok(());
            }
        }
    }

    /// The task of a session on its WebSocket, until it ends.
    async fn run<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
    ) -> Result<Infallible, Stop> {
        let Some(stream) = self.stream.get() else {
            return Err(Stop::quiet("transport_close"));
        };
        let tcp = stream.tcp();
        let broken = |_: io::Error| Stop::quiet("transport_error");
        // Whatever was queued before the socket was there (a session upgraded from polling).
        let mut backlog = self.write_queue()?;
        loop {
            tokio::select! {
                ready = tcp.readable() => {
                    ready.map_err(broken)?;
                    self.read_available(h, l)?;
                }
                _ = self.wake.notified() => backlog = self.write_queue()?,
                ready = tcp.writable(), if backlog => {
                    ready.map_err(broken)?;
                    backlog = self.write_queue()?;
                }
                _ = tokio::time::sleep_until(l.next_timer) => self.on_timer(h, l)?,
            }
        }
    }

    /// Writes as much of the queue as the socket takes: whether some is left. A closing
    /// session ends once all of it is out.
    fn write_queue(&self) -> Result<bool, Stop> {
        let empty = self.flush().map_err(|_| Stop::quiet("transport_error"))?;
        if empty && self.lock().closing {
            return Err(Stop::closed("server_disconnect"));
        }
        Ok(!empty)
    }

    fn on_timer<H: Handler<User = U>>(&self, h: &H, l: &mut Local) -> Result<(), Stop> {
        let now = Instant::now();
        if self.ns() == Ns::None && now.duration_since(l.opened) >= h.settings().connect_timeout {
            return Err(Stop::protocol("connect_timeout", 1008, "connect_timeout"));
        }
        if l.waiting_pong {
            return Err(Stop::quiet("heartbeat_timeout"));
        }
        self.send(packet::ping(), 0);
        l.waiting_pong = true;
        l.ping_sent = now;
        l.next_timer = now + h.settings().ping_timeout;
        Ok(())
    }

    /// Reads what the socket has (through a stack buffer) and handles every complete frame.
    fn read_available<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
    ) -> Result<(), Stop> {
        let Some(stream) = self.stream.get() else {
            return Ok(());
        };
        let mut buf = [0u8; 8192];
        for _ in 0..MAX_READS {
            let n = match stream.tcp().try_read(&mut buf) {
                Ok(0) => return Err(Stop::quiet("transport_close")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Stop::quiet("transport_error")),
            };
            self.decode(h, l, &buf[..n])?;
        }
        Ok(())
    }

    /// Handles every complete frame in the kept partial bytes followed by `data`, and keeps
    /// what is left of an incomplete one.
    fn decode<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        l: &mut Local,
        data: &[u8],
    ) -> Result<(), Stop> {
        let mut kept = std::mem::take(&mut l.partial);
        let data = if kept.is_empty() {
            data
        } else {
            kept.extend_from_slice(data);
            &kept
        };
        let max = h.settings().max_packet as usize;
        let deflate = self.codec().deflate_min.is_some();
        let mut at = 0;
        while let Some((f, used)) = frame::decode(&data[at..], max, deflate)? {
            at += used;
            if let Some(message) = self.on_frame(&mut l.message, f, max)? {
                if self.on_message(h, message)? {
                    l.ponged(h.settings().ping_interval);
                }
            }
        }
        l.partial = data[at..].to_vec();
        Ok(())
    }

    /// Assembles messages from frames (`pending`: the one being assembled) and answers control
    /// frames: a complete message, if this frame ended one.
    fn on_frame(
        &self,
        pending: &mut Option<(Opcode, Body)>,
        f: Frame,
        max: usize,
    ) -> Result<Option<Message>, Stop> {
        let (opcode, mut body) = match f.opcode {
            Opcode::Ping => {
                self.send(frame::encode(Opcode::Pong, &f.payload), 0);
                return Ok(None);
            }
            Opcode::Pong => return Ok(None),
            Opcode::Close => return Err(Stop::closed("transport_close")),
            Opcode::Continuation => pending
                .take()
                .ok_or(FrameError::Protocol("continuation_without_message"))?,
            _ if pending.is_some() => {
                return Err(FrameError::Protocol("interleaved_message").into())
            }
            opcode if f.fin && !f.rsv1 => return Ok(Some((opcode, f.payload))),
            opcode if f.rsv1 => (opcode, Body::Deflated(Box::new(Inflater::new(max)))),
            opcode => (opcode, Body::Plain(Vec::new())),
        };
        body.push(&f.payload, max)?;
        if !f.fin {
            *pending = Some((opcode, body));
            return Ok(None);
        }
        Ok(Some((opcode, body.finish()?)))
    }

    /// Handles one message of the WebSocket; `Ok(true)` for a pong.
    fn on_message<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        (opcode, payload): Message,
    ) -> Result<bool, Stop> {
        let parsed = match opcode {
            // Engine.IO over WebSocket: a binary message is a message packet's raw data.
            Opcode::Binary if self.codec().msgpack => msgpack::parse(&payload),
            Opcode::Binary => return Err(Stop::protocol("bad_packet", 1003, "binary_message")),
            _ => match String::from_utf8(payload) {
                Ok(text) => packet::parse(&text),
                Err(_) => return Err(Stop::protocol("bad_packet", 1007, "invalid_utf8")),
            },
        };
        self.on_packet(h, parsed?)
    }

    /// Handles one packet from the client, whichever transport brought it; `Ok(true)` for a
    /// pong (the caller's heartbeat).
    pub(super) fn on_packet<H: Handler<User = U>>(
        self: &Arc<Self>,
        h: &H,
        p: Incoming,
    ) -> Result<bool, Stop> {
        match p {
            Incoming::Pong => return Ok(true),
            Incoming::Ping => {
                self.send(packet::pong(), 0);
            }
            Incoming::Noop | Incoming::Ack => {}
            Incoming::Close => return Err(Stop::quiet("transport_close")),
            Incoming::Disconnect => return Err(Stop::quiet("client_disconnect")),
            Incoming::Connect { nsp, auth } => {
                if nsp != "/" {
                    self.send(self.codec().connect_error(&nsp, "Invalid namespace"), 0);
                } else if !self.start_connect() {
                    tracing::debug!(sid = %self.sid, "duplicate connect packet ignored");
                } else {
                    h.connect(self.clone(), auth);
                }
            }
            Incoming::Event { nsp, name, .. } if nsp != "/" || self.ns() != Ns::Connected => {
                ::metrics::counter!(metrics::CLIENT_PROTOCOL_ERRORS, "reason" => "event_before_connect")
                    .increment(1);
                tracing::debug!(sid = %self.sid, event = %name, "event before the namespace connect dropped");
            }
            Incoming::Event {
                ack, name, data, ..
            } => h.event(self, name, data, ack),
        }
        Ok(false)
    }

    /// Ends the session: no more writes, a close frame if one is due, the TCP connection shut
    /// down, and the socket's rooms and timers released.
    async fn finish<H: Handler<User = U>>(self: &Arc<Self>, h: &H, stop: Stop) {
        if let (Some((code, why)), Some(stream)) = (stop.close, self.stream.get()) {
            // Queued behind whatever is still unwritten; `flush` ignores the closing flags.
            self.lock()
                .queue
                .push_back((frame::encode_close(code, why), 0));
            let deadline = Instant::now() + CLOSE_FLUSH;
            while let Ok(false) = self.flush() {
                let writable = tokio::time::timeout_at(deadline, stream.tcp().writable()).await;
                if writable.is_err() {
                    break;
                }
            }
        }
        let connected = {
            let mut out = self.lock();
            out.closed = true;
            out.queue = VecDeque::new();
            out.events = 0;
            if let Some(poll) = out.poll.as_ref() {
                poll.ready.notify_one();
            }
            out.ns == Ns::Connected
        };
        if let Some(stream) = self.stream.get() {
            stream.close();
        }
        if self.born_polling {
            h.polls().remove(&self.sid);
        }
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
        let mut out = self.lock();
        if out.closed {
            return false;
        }
        out.ns = Ns::Connected;
        drop(out);
        self.send(self.codec().connected(&self.sid), 0);
        true
    }

    /// Refuses the connect packet handed to [`Handler::connect`] with `code` (the client's
    /// `connect_error` message); the client may try again.
    pub fn refuse_connect(&self, code: &str) {
        self.lock().ns = Ns::None;
        self.send(self.codec().connect_error("/", code), 0);
    }

    /// Upgrades this long-polling session to `stream`, a WebSocket the client opened with the
    /// session's id (its 101 already written, or in `response` to write first) and agreed to
    /// `codec` (the session's parser, and the WebSocket's compression): answers the
    /// probe (`2probe` → `3probe`), has the pending GET answered so the client can pause
    /// polling, and on the upgrade packet (`5`) makes the WebSocket the session's socket.
    /// Anything else, or no upgrade within [`UPGRADE_TIMEOUT`], closes the WebSocket and the
    /// session goes on polling.
    pub async fn take_over(
        self: Arc<Self>,
        mut stream: TrackedStream,
        response: String,
        early: Vec<u8>,
        codec: Codec,
        max_packet: usize,
    ) {
        if !response.is_empty() && stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let probe = self.probe(&mut stream, early, codec.deflate_min.is_some(), max_packet);
        let outcome = tokio::time::timeout(UPGRADE_TIMEOUT, probe).await;
        let (result, code, why, what) = match outcome {
            Ok(Ok(rest)) => {
                let mut out = self.lock();
                let closed = out.closed;
                let Some(poll) = out.poll.as_mut().filter(|p| !closed && !p.upgraded()) else {
                    return;
                };
                self.codec.store(codec.pack(), Ordering::Release);
                if self.stream.set(stream).is_err() {
                    return;
                }
                poll.upgrade = Upgrade::Done(rest);
                poll.ready.notify_one();
                drop(out);
                ::metrics::counter!(metrics::UPGRADES, "result" => "upgraded").increment(1);
                self.wake.notify_one();
                return;
            }
            Ok(Err(why)) => ("refused", 1002, why, "upgrade refused"),
            Err(_) => (
                "timeout",
                1008,
                "upgrade_timeout",
                "upgrade not completed in time",
            ),
        };
        if let Some(poll) = self.lock().poll.as_mut().filter(|p| !p.upgraded()) {
            poll.upgrade = Upgrade::None;
        }
        ::metrics::counter!(metrics::UPGRADES, "result" => result).increment(1);
        tracing::debug!(sid = %self.sid, why, "{what}; the session goes on polling");
        let _ = stream.write_all(&frame::encode_close(code, why)).await;
    }

    /// The probe and the upgrade packet; `Ok` holds the bytes read after it.
    async fn probe(
        &self,
        stream: &mut TrackedStream,
        mut data: Vec<u8>,
        deflate: bool,
        max: usize,
    ) -> Result<Vec<u8>, &'static str> {
        use tokio::io::AsyncReadExt;
        let mut pending = None;
        let mut probed = false;
        let mut at = 0;
        loop {
            let decoded = frame::decode(&data[at..], max, deflate).map_err(|e| e.close().1)?;
            let Some((f, used)) = decoded else {
                data.drain(..at);
                at = 0;
                if let Ok(0) | Err(_) = stream.read_buf(&mut data).await {
                    return Err("closed");
                }
                continue;
            };
            at += used;
            match f.opcode {
                Opcode::Ping => {
                    let pong = frame::encode(Opcode::Pong, &f.payload);
                    stream.write_all(&pong).await.map_err(|_| "closed")?;
                    continue;
                }
                // Other control frames end a WebSocket that is not (yet) the session's.
                Opcode::Pong | Opcode::Close => return Err("bad_frame"),
                _ => {}
            }
            let (opcode, payload) = match self.on_frame(&mut pending, f, max) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(_) => return Err("bad_frame"),
            };
            match (probed, opcode, &payload[..]) {
                (false, Opcode::Text, b"2probe") => {
                    let answer = frame::encode(Opcode::Text, b"3probe");
                    stream.write_all(&answer).await.map_err(|_| "closed")?;
                    probed = true;
                    let mut out = self.lock();
                    let closed = out.closed;
                    let Some(poll) = out.poll.as_mut().filter(|_| !closed) else {
                        return Err("session_ended");
                    };
                    if !poll.upgraded() {
                        poll.upgrade = Upgrade::Probed { noop: poll.getting };
                    }
                    poll.ready.notify_one();
                }
                (true, Opcode::Text, b"5") => return Ok(data.split_off(at)),
                _ => return Err("unexpected_packet"),
            }
        }
    }
}

/// A complete WebSocket message: its opcode and payload.
type Message = (Opcode, Vec<u8>);

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
