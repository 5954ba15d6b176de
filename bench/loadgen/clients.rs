//! `rtg-loadgen clients`: many authenticated Socket.IO connections, one small task each, that
//! record every delivery's delay and check room offsets for loss and doubles. `--transport`
//! chooses how they connect (`transport.rs`): WebSocket, long-polling, or polling then the
//! upgrade; deliveries are counted the same way on all of them.
//!
//! Per connection there is one task holding one connection (a `WebSocketStream` with small
//! buffers, or one kept-alive HTTP connection), nothing else: no channels, no split halves.
//! Everything the report needs lives in shared atomics:
//!
//! - `next[conn * slots + slot]`: the offset this connection expects next in that room (or
//!   [`UNTRACKED`]), so a skipped offset is a gap and an old one is a double;
//! - `wstart[...]`: the offset the connection stood at when the current window began (entry or
//!   `mark`), so the expected count is `last published offset - wstart` per connection and room.
//!
//! Control (with `--control`): one command per line on stdin, one JSON object per line on
//! stdout. `mark` starts a new measurement window, `report FILE...` waits until every event the
//! publisher reports (`rooms: {room: last offset}`) has arrived (or `--drain` passes) and prints
//! the window, `stop` prints the final report and exits. Without `--control` the generator holds
//! for `--hold` seconds, or until every connection has `--expect-events` events per room.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use jsonwebtoken::EncodingKey;
use rand::Rng;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hist::Histogram;
use crate::procstat::{self, round3, Sample};
use crate::proto::{self, now_us};
use crate::transport::{Conn, ConnError, Dial, Transport};

/// Arguments of `clients`.
#[derive(Args, Debug, Clone)]
pub struct ClientsArgs {
    /// Server address `host:port` (repeatable); connections are spread round-robin.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub connections: usize,
    /// Connections started per second.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Source addresses to bind: 127.0.0.SOURCE_BASE and the next SOURCES - 1 (one share each).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// Last byte of the first source address.
    #[arg(long, default_value_t = 2)]
    pub source_base: u8,
    /// Second byte of the source addresses (127.SOURCE_NET.0.x), so several generators differ.
    #[arg(long, default_value_t = 0)]
    pub source_net: u8,
    /// Global index of this generator's first connection; the user id (`sub`) of connection i
    /// is `index-base + i`, so every connection is alone in `user:<sub>`.
    #[arg(long, default_value_t = 0)]
    pub index_base: u64,
    /// Room to join after authenticating (repeatable); `ROOM@K` joins only connections whose
    /// global index is below K.
    #[arg(long = "join")]
    pub join: Vec<String>,
    /// Also track deliveries in each connection's own `user:<sub>` room.
    #[arg(long)]
    pub user_rooms: bool,
    /// Tenant (`institutionId` claim).
    #[arg(long, default_value = "1")]
    pub tenant: String,
    /// Role claim.
    #[arg(long, default_value = "STUDENT")]
    pub role: String,
    /// HS256 secret the servers verify tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Events each connection must receive per tracked room; the run ends when all arrived.
    #[arg(long)]
    pub expect_events: Option<u64>,
    /// Longest time to hold the connections after they are up (seconds), without --control.
    #[arg(long, default_value_t = 60.0)]
    pub hold: f64,
    /// Read commands (mark, report FILE..., stop) from stdin.
    #[arg(long)]
    pub control: bool,
    /// How long `report` waits for missing deliveries (seconds).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Server process to watch (CPU seconds, RSS); repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Reconnect lost connections to the next target, with jittered exponential backoff.
    #[arg(long)]
    pub reconnect: bool,
    /// With --reconnect: come back with each room's position (`since`) and count the
    /// `recovered: true|false` answers.
    #[arg(long)]
    pub recover: bool,
    /// First reconnect delay: uniform in [0, this) milliseconds.
    #[arg(long, default_value_t = 500)]
    pub reconnect_base_ms: u64,
    /// Longest reconnect delay (milliseconds).
    #[arg(long, default_value_t = 5000)]
    pub reconnect_max_ms: u64,
    /// Deadline of one connection's whole handshake (seconds).
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 2000)]
    pub max_pending: usize,
    /// Runtime threads (1: a single-threaded runtime, the cheapest).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// WebSocket read buffer per connection (bytes).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
    /// Label copied into every report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Offer permessage-deflate (and inflate the server's compressed frames).
    #[arg(long)]
    pub deflate: bool,
    /// How each connection reaches the server: WebSocket from the start, HTTP long-polling
    /// only, or polling then the WebSocket upgrade (the stock client's default).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
}

/// `next` value of a room a connection is not (yet) in.
const UNTRACKED: u64 = u64::MAX;

struct JoinRoom {
    name: String,
    /// Only connections with a global index below this join.
    below: Option<u64>,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    ever_connected: AtomicU64,
    settled: AtomicUsize,
    failed: AtomicU64,
    join_failed: AtomicU64,
    dropped: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    first_loss_us: AtomicU64,
    last_reconnect_us: AtomicU64,
    received: AtomicU64,
    duplicated: AtomicU64,
    gaps: AtomicU64,
    untracked: AtomicU64,
    no_timestamp: AtomicU64,
    first_recv_us: AtomicU64,
    last_recv_us: AtomicU64,
    connect_start_us: AtomicU64,
    connect_done_us: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    last_recovered_us: AtomicU64,
}

struct Window {
    start_us: u64,
    procs: Vec<Sample>,
}

struct Shared {
    args: ClientsArgs,
    dial: Dial,
    key: EncodingKey,
    targets: Vec<SocketAddr>,
    rooms: Vec<JoinRoom>,
    slots: usize,
    next: Vec<AtomicU64>,
    wstart: Vec<AtomicU64>,
    /// Epoch of each tracked room (with --recover).
    epochs: Vec<Mutex<String>>,
    c: Counters,
    latency: Histogram,
    handshake: Histogram,
    reconnect: Histogram,
    errors: Mutex<HashMap<String, u64>>,
    window: Mutex<Window>,
    started_procs: Vec<Sample>,
    started_us: u64,
}

impl Shared {
    fn user_slot(&self) -> Option<usize> {
        self.args.user_rooms.then_some(self.rooms.len())
    }

    fn sub(&self, conn: usize) -> u64 {
        self.args.index_base + conn as u64
    }

    fn slot_of(&self, conn: usize, room: &str) -> Option<usize> {
        if let Some(i) = self.rooms.iter().position(|r| r.name == room) {
            return Some(i);
        }
        let user = self.user_slot()?;
        let id: u64 = room.strip_prefix("user:")?.parse().ok()?;
        (id == self.sub(conn)).then_some(user)
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let short: String = e.chars().take(120).collect();
        if errors.len() < 20 || errors.contains_key(&short) {
            *errors.entry(short).or_default() += 1;
        }
    }

    /// Counts one delivery of `room` at `offset` for `conn`.
    fn count(&self, conn: usize, room: &str, offset: u64) {
        let Some(slot) = self.slot_of(conn, room) else {
            self.c.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let cell = &self.next[conn * self.slots + slot];
        let next = cell.load(Ordering::Relaxed);
        if next == UNTRACKED {
            self.c.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.c.received.fetch_add(1, Ordering::Relaxed);
        if offset == next {
            cell.store(next + 1, Ordering::Relaxed);
        } else if offset > next {
            self.c.gaps.fetch_add(offset - next, Ordering::Relaxed);
            cell.store(offset + 1, Ordering::Relaxed);
        } else {
            self.c.duplicated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the timing of one event frame; returns its room and offset.
    fn timing<'a>(&self, body: &'a str) -> Option<(&'a str, u64)> {
        let d = proto::scan_event(body)?;
        let now = now_us();
        match d.sent_at_us {
            Some(sent) => self.latency.record(now.saturating_sub(sent)),
            None => {
                self.c.no_timestamp.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.c.first_recv_us.fetch_min(now, Ordering::Relaxed);
        self.c.last_recv_us.fetch_max(now, Ordering::Relaxed);
        Some((d.room, d.offset))
    }

    /// Starts tracking `slot` of `conn` at `offset` (entry into the room); with --recover,
    /// also keeps the room's epoch and counts the entry's `recovered` answer.
    fn enter_entry(&self, conn: usize, slot: usize, entry: &Value) {
        if let Some(cell) = self.epochs.get(conn * self.slots + slot) {
            let epoch = entry
                .get("epoch")
                .and_then(Value::as_str)
                .unwrap_or_default();
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = epoch.to_string();
            match entry.get("recovered").and_then(Value::as_bool) {
                Some(true) => {
                    self.c.recovered.fetch_add(1, Ordering::Relaxed);
                    self.c
                        .last_recovered_us
                        .fetch_max(now_us(), Ordering::Relaxed);
                }
                Some(false) => {
                    self.c.not_recovered.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        self.enter(conn, slot, entry_offset(entry));
    }

    /// The position of `slot` of `conn` to recover from, if it has one (with --recover).
    fn since(&self, conn: usize, slot: usize) -> Option<Value> {
        let i = conn * self.slots + slot;
        let epoch = self
            .epochs
            .get(i)?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let next = self.next[i].load(Ordering::Relaxed);
        (!epoch.is_empty() && next != UNTRACKED && next > 0)
            .then(|| json!({ "epoch": epoch, "offset": next - 1 }))
    }

    /// Starts tracking `slot` of `conn` at `offset` (entry into the room).
    fn enter(&self, conn: usize, slot: usize, offset: u64) {
        let i = conn * self.slots + slot;
        self.wstart[i].store(offset, Ordering::Relaxed);
        self.next[i].store(offset + 1, Ordering::Relaxed);
    }
}

/// Runs the `clients` subcommand.
pub fn run(args: ClientsArgs) -> anyhow::Result<()> {
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(main(args))
}

fn parse_rooms(join: &[String]) -> anyhow::Result<Vec<JoinRoom>> {
    join.iter()
        .map(|j| match j.rsplit_once('@') {
            Some((name, k)) => Ok(JoinRoom {
                name: name.to_string(),
                below: Some(k.parse().map_err(|_| anyhow::anyhow!("bad --join {j}"))?),
            }),
            None => Ok(JoinRoom {
                name: j.clone(),
                below: None,
            }),
        })
        .collect()
}

async fn main(args: ClientsArgs) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for t in &args.targets {
        let addr = tokio::net::lookup_host(t.as_str())
            .await?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {t}"))?;
        targets.push(addr);
    }
    let rooms = parse_rooms(&args.join)?;
    let slots = rooms.len() + usize::from(args.user_rooms);
    let cells = args.connections * slots.max(1);
    let started_procs = procstat::sample_all(&args.pids);
    let started_us = now_us();
    let sh = Arc::new(Shared {
        dial: Dial {
            transport: args.transport,
            deflate: args.deflate,
            read_buffer: args.read_buffer,
        },
        key: EncodingKey::from_secret(args.secret.as_bytes()),
        targets,
        rooms,
        slots: slots.max(1),
        next: (0..cells).map(|_| AtomicU64::new(UNTRACKED)).collect(),
        wstart: (0..cells).map(|_| AtomicU64::new(0)).collect(),
        epochs: (0..if args.recover { cells } else { 0 })
            .map(|_| Mutex::new(String::new()))
            .collect(),
        c: Counters {
            first_loss_us: AtomicU64::new(u64::MAX),
            first_recv_us: AtomicU64::new(u64::MAX),
            ..Counters::default()
        },
        latency: Histogram::new(),
        handshake: Histogram::new(),
        reconnect: Histogram::new(),
        errors: Mutex::default(),
        window: Mutex::new(Window {
            start_us: started_us,
            procs: started_procs.clone(),
        }),
        started_procs,
        started_us,
        args,
    });

    // Spawn connections at the ramp rate, at most `max_pending` handshakes at once.
    let spawner = {
        let sh = sh.clone();
        tokio::spawn(async move {
            let pending = Arc::new(Semaphore::new(sh.args.max_pending.max(1)));
            let start = Instant::now();
            sh.c.connect_start_us.store(now_us(), Ordering::Relaxed);
            for i in 0..sh.args.connections {
                if sh.args.ramp > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / sh.args.ramp);
                    tokio::time::sleep_until(due.into()).await;
                }
                let Ok(permit) = pending.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(connection(sh.clone(), i, permit));
            }
        })
    };

    let progress = {
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "[{}] connected {} failed {} received {} lost-gaps {}",
                    sh.args.label,
                    sh.c.connected.load(Ordering::Relaxed),
                    sh.c.failed.load(Ordering::Relaxed),
                    sh.c.received.load(Ordering::Relaxed),
                    sh.c.gaps.load(Ordering::Relaxed),
                );
            }
        })
    };

    // Ready: every connection connected once (or, without --reconnect, failed for good).
    let hold_deadline = |from: Instant| from + Duration::from_secs_f64(sh.args.hold.max(0.0));
    let t0 = Instant::now();
    while sh.c.settled.load(Ordering::Relaxed) < sh.args.connections {
        if !sh.args.control && Instant::now() > hold_deadline(t0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = spawner.await;
    sh.c.connect_done_us.store(now_us(), Ordering::Relaxed);
    emit(&ready_json(&sh));

    if sh.args.control {
        control(&sh).await;
    } else {
        let deadline = hold_deadline(Instant::now());
        loop {
            if let Some(e) = sh.args.expect_events {
                let (expected, unique, tail) = tally(&sh, &Expect::PerRoom(e));
                if unique >= expected && tail == 0 {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expect = match sh.args.expect_events {
            Some(e) => Expect::PerRoom(e),
            None => Expect::Seen,
        };
        emit(&report_json(&sh, "final", &expect, true));
    }
    progress.abort();
    Ok(())
}

/// Prints one JSON line on stdout.
fn emit(v: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

async fn control(sh: &Arc<Shared>) {
    let watcher = {
        let sh = sh.clone();
        tokio::spawn(async move { watch_recovery(sh).await })
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut last_offsets: HashMap<String, u64> = HashMap::new();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            _ => "stop".to_string(),
        };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("mark") => {
                mark(sh);
                emit(&json!({ "type": "marked", "label": sh.args.label, "at_us": now_us() }));
            }
            Some("report") => {
                let mut offsets: HashMap<String, u64> = HashMap::new();
                for path in words {
                    match read_offsets(path) {
                        Ok(o) => {
                            for (room, off) in o {
                                let e = offsets.entry(room).or_default();
                                *e = (*e).max(off);
                            }
                        }
                        Err(e) => eprintln!("cannot read {path}: {e}"),
                    }
                }
                let expect = Expect::Offsets(offsets.clone());
                wait_drained(sh, &expect).await;
                last_offsets = offsets;
                emit(&report_json(sh, "report", &expect, false));
            }
            Some("stop") => {
                let expect = if last_offsets.is_empty() {
                    Expect::Seen
                } else {
                    Expect::Offsets(last_offsets)
                };
                emit(&report_json(sh, "final", &expect, true));
                break;
            }
            Some(other) => eprintln!("unknown command {other:?}"),
            None => {}
        }
    }
    watcher.abort();
}

/// Announces (once per drop) when every connection is back after connections were lost.
async fn watch_recovery(sh: Arc<Shared>) {
    let mut announced = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let lost = sh.c.disconnects.load(Ordering::Relaxed);
        let up = sh.c.connected.load(Ordering::Relaxed);
        if lost > announced && up as usize >= sh.args.connections {
            announced = lost;
            let first_loss = sh.c.first_loss_us.load(Ordering::Relaxed);
            let last = sh.c.last_reconnect_us.load(Ordering::Relaxed);
            emit(&json!({
                "type": "recovered",
                "label": sh.args.label,
                "at_us": now_us(),
                "first_loss_us": first_loss,
                "last_reconnect_us": last,
                "disconnects": lost,
                "reconnects": sh.c.reconnects.load(Ordering::Relaxed),
            }));
        }
    }
}

fn read_offsets(path: &str) -> anyhow::Result<HashMap<String, u64>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let rooms = v
        .get("rooms")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow::anyhow!("no rooms object in {path}"))?;
    Ok(rooms
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect())
}

/// Starts a new window: counters, histogram and per-room starting points.
fn mark(sh: &Shared) {
    for (n, w) in sh.next.iter().zip(&sh.wstart) {
        let next = n.load(Ordering::Relaxed);
        if next != UNTRACKED {
            w.store(next - 1, Ordering::Relaxed);
        }
    }
    for c in [
        &sh.c.received,
        &sh.c.duplicated,
        &sh.c.gaps,
        &sh.c.untracked,
        &sh.c.no_timestamp,
        &sh.c.last_recv_us,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    sh.c.first_recv_us.store(u64::MAX, Ordering::Relaxed);
    sh.latency.reset();
    let mut w = sh.window.lock().unwrap_or_else(|p| p.into_inner());
    w.start_us = now_us();
    w.procs = procstat::sample_all(&sh.args.pids);
}

/// What each tracked room of each connection should have received by the end of the window.
enum Expect {
    /// `n` events per room after the connection entered it.
    PerRoom(u64),
    /// Up to the last offset the publisher reports for each room.
    Offsets(HashMap<String, u64>),
    /// Whatever was seen (no expectation: only gaps and doubles count).
    Seen,
}

/// (expected, unique received, missing at the end) over every tracked connection and room.
fn tally(sh: &Shared, expect: &Expect) -> (u64, u64, u64) {
    let mut expected = 0;
    let mut tail = 0;
    for conn in 0..sh.args.connections {
        for slot in 0..sh.slots {
            let i = conn * sh.slots + slot;
            let next = sh.next[i].load(Ordering::Relaxed);
            if next == UNTRACKED {
                continue;
            }
            let start = sh.wstart[i].load(Ordering::Relaxed);
            let last = match expect {
                Expect::PerRoom(n) => start + n,
                Expect::Seen => next - 1,
                Expect::Offsets(map) => {
                    let found = if slot < sh.rooms.len() {
                        map.get(&sh.rooms[slot].name)
                    } else {
                        map.get(&format!("user:{}", sh.sub(conn)))
                    };
                    match found {
                        Some(o) => *o,
                        None => continue,
                    }
                }
            };
            expected += last.saturating_sub(start);
            tail += last.saturating_sub(next - 1);
        }
    }
    let received = sh.c.received.load(Ordering::Relaxed);
    let unique = received.saturating_sub(sh.c.duplicated.load(Ordering::Relaxed));
    (expected, unique, tail)
}

async fn wait_drained(sh: &Shared, expect: &Expect) {
    let deadline = Instant::now() + Duration::from_secs_f64(sh.args.drain.max(0.0));
    loop {
        let (expected, unique, tail) = tally(sh, expect);
        if (unique >= expected && tail == 0) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn connections_json(sh: &Shared) -> Value {
    let c = &sh.c;
    let start = c.connect_start_us.load(Ordering::Relaxed);
    let done = c.connect_done_us.load(Ordering::Relaxed);
    let secs = done.saturating_sub(start) as f64 / 1e6;
    let ever = c.ever_connected.load(Ordering::Relaxed);
    let hs = sh.handshake.snapshot();
    json!({
        "transport": sh.dial.transport.name(),
        "target": sh.args.connections,
        "held": c.connected.load(Ordering::Relaxed),
        "connected_once": ever,
        "failed": c.failed.load(Ordering::Relaxed),
        "join_failed": c.join_failed.load(Ordering::Relaxed),
        "dropped": c.dropped.load(Ordering::Relaxed),
        "connect_secs": round3(secs),
        "connect_rate": if secs > 0.0 { round3(ever as f64 / secs) } else { 0.0 },
        "handshake_ms": { "p50": ms(hs.quantile(0.5)), "p99": ms(hs.quantile(0.99)), "max": ms(hs.max()) },
        "handshake_hist_us": hs.sparse(),
    })
}

fn ready_json(sh: &Shared) -> Value {
    let now = procstat::sample_all(&sh.args.pids);
    json!({
        "type": "ready",
        "label": sh.args.label,
        "at_us": now_us(),
        "connections": connections_json(sh),
        "procs": procstat::delta_json(&sh.args.pids, &sh.started_procs, &now),
        "errors": *sh.errors.lock().unwrap_or_else(|p| p.into_inner()),
    })
}

fn report_json(sh: &Shared, kind: &str, expect: &Expect, whole_run: bool) -> Value {
    let (expected, unique, tail) = tally(sh, expect);
    let c = &sh.c;
    let received = c.received.load(Ordering::Relaxed);
    let gaps = c.gaps.load(Ordering::Relaxed);
    let first = c.first_recv_us.load(Ordering::Relaxed);
    let last = c.last_recv_us.load(Ordering::Relaxed);
    let span = if last > first {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    let lat = sh.latency.snapshot();
    let now = procstat::sample_all(&sh.args.pids);
    let (start_us, procs) = if whole_run {
        (
            sh.started_us,
            procstat::delta_json(&sh.args.pids, &sh.started_procs, &now),
        )
    } else {
        let w = sh.window.lock().unwrap_or_else(|p| p.into_inner());
        (
            w.start_us,
            procstat::delta_json(&sh.args.pids, &w.procs, &now),
        )
    };
    let (self_cpu, self_rss) = procstat::own_usage();
    let rc = sh.reconnect.snapshot();
    let mut v = json!({
        "type": kind,
        "label": sh.args.label,
        "at_us": now_us(),
        "window_secs": round3(now_us().saturating_sub(start_us) as f64 / 1e6),
        "connections": connections_json(sh),
        "deliveries": {
            "expected": expected,
            "received": received,
            "unique": unique,
            "lost": gaps + tail,
            "duplicated": c.duplicated.load(Ordering::Relaxed),
            "gaps": gaps,
            "missing_at_end": tail,
            "untracked": c.untracked.load(Ordering::Relaxed),
            "without_timestamp": c.no_timestamp.load(Ordering::Relaxed),
            "first_us": if first == u64::MAX { 0 } else { first },
            "last_us": last,
            "span_secs": round3(span),
            "per_sec": if span > 0.0 { round3(received as f64 / span) } else { 0.0 },
        },
        "latency_ms": {
            "count": lat.count(),
            "mean": round3(lat.mean() / 1000.0),
            "p50": ms(lat.quantile(0.5)),
            "p90": ms(lat.quantile(0.9)),
            "p99": ms(lat.quantile(0.99)),
            "p999": ms(lat.quantile(0.999)),
            "max": ms(lat.max()),
        },
        "latency_hist_us": lat.sparse(),
        "procs": procs,
        "self": { "cpu_s": round3(self_cpu), "peak_rss_kb": self_rss },
        "errors": *sh.errors.lock().unwrap_or_else(|p| p.into_inner()),
    });
    if sh.args.reconnect {
        let first_loss = c.first_loss_us.load(Ordering::Relaxed);
        let last_back = c.last_reconnect_us.load(Ordering::Relaxed);
        let reconnects = c.reconnects.load(Ordering::Relaxed);
        let secs = if first_loss != u64::MAX && last_back > first_loss {
            (last_back - first_loss) as f64 / 1e6
        } else {
            0.0
        };
        v["reconnect"] = json!({
            "disconnects": c.disconnects.load(Ordering::Relaxed),
            "reconnects": reconnects,
            "first_loss_us": if first_loss == u64::MAX { 0 } else { first_loss },
            "last_reconnect_us": last_back,
            "recovery_secs": round3(secs),
            "reconnects_per_sec": if secs > 0.0 { round3(reconnects as f64 / secs) } else { 0.0 },
            "delay_ms": { "p50": ms(rc.quantile(0.5)), "p90": ms(rc.quantile(0.9)), "p99": ms(rc.quantile(0.99)), "max": ms(rc.max()) },
            "delay_hist_us": rc.sparse(),
        });
    }
    if sh.args.recover {
        v["recovery"] = json!({
            "recovered": c.recovered.load(Ordering::Relaxed),
            "not_recovered": c.not_recovered.load(Ordering::Relaxed),
            "last_recovered_us": c.last_recovered_us.load(Ordering::Relaxed),
        });
    }
    v
}

/// One connection's life: connect, hold, and (with --reconnect) come back after losses.
async fn connection(sh: Arc<Shared>, conn: usize, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    let mut target = conn % sh.targets.len();
    let mut first = true;
    let mut lost_at: Option<u64> = None;
    let mut failures = 0u32;
    let timeout = Duration::from_secs_f64(sh.args.connect_timeout);
    loop {
        let t0 = now_us();
        let result = tokio::time::timeout(timeout, handshake(&sh, conn, target))
            .await
            .unwrap_or(Err(ConnError::Timeout));
        drop(permit.take());
        match result {
            Ok(mut io) => {
                let now = now_us();
                sh.handshake.record(now - t0);
                sh.c.connected.fetch_add(1, Ordering::Relaxed);
                if first {
                    first = false;
                    sh.c.ever_connected.fetch_add(1, Ordering::Relaxed);
                    sh.c.settled.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(lost) = lost_at.take() {
                    sh.reconnect.record(now - lost);
                    sh.c.reconnects.fetch_add(1, Ordering::Relaxed);
                    sh.c.last_reconnect_us.fetch_max(now, Ordering::Relaxed);
                }
                failures = 0;
                let why = hold(&sh, conn, &mut io).await;
                sh.c.connected.fetch_sub(1, Ordering::Relaxed);
                if !sh.args.reconnect {
                    sh.c.dropped.fetch_add(1, Ordering::Relaxed);
                    sh.error(format!("dropped: {why}"));
                    return;
                }
                let now = now_us();
                lost_at = Some(now);
                sh.c.first_loss_us.fetch_min(now, Ordering::Relaxed);
                sh.c.disconnects.fetch_add(1, Ordering::Relaxed);
                // The clients of a lost server spread over all the others.
                let others = sh.targets.len().saturating_sub(1).max(1);
                target = (target + 1 + (conn / sh.targets.len()) % others) % sh.targets.len();
                let base = sh.args.reconnect_base_ms.max(1);
                let wait = rand::thread_rng().gen_range(0..base);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(e) => {
                sh.c.failed.fetch_add(1, Ordering::Relaxed);
                sh.error(e.to_string());
                if !sh.args.reconnect {
                    if first {
                        sh.c.settled.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                failures += 1;
                target = (target + 1) % sh.targets.len();
                let cap = sh
                    .args
                    .reconnect_base_ms
                    .max(1)
                    .saturating_mul(1u64 << failures.min(16))
                    .min(sh.args.reconnect_max_ms.max(1));
                let wait = rand::thread_rng().gen_range(cap / 2..=cap);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}

fn source_of(sh: &Shared, conn: usize) -> Option<IpAddr> {
    if sh.args.sources == 0 {
        return None;
    }
    // Decorrelated from the target choice (conn % targets), so every source reaches every target.
    let k = (conn / sh.targets.len()) % sh.args.sources;
    let n = u32::from(sh.args.source_base) + k as u32;
    let [_, _, hi, lo] = n.to_be_bytes();
    Some(IpAddr::V4(Ipv4Addr::new(127, sh.args.source_net, hi, lo)))
}

/// Deliveries that came before the room's entry offset was known (an event can overtake the
/// join ack or `authenticated`); counted once the offset is known.
type Early = Vec<(String, u64)>;

/// Handles one frame during the handshake; returns it unless it was a ping or an event.
async fn handshake_frame(
    sh: &Shared,
    conn: usize,
    io: &mut Conn,
    early: &mut Early,
) -> Result<Option<Utf8Bytes>, ConnError> {
    let t = io.recv().await.map_err(|e| match e {
        ConnError::Ended(why) => ConnError::Protocol(format!("{why} during handshake")),
        e => e,
    })?;
    if t == "2" {
        io.send("3".into()).await?;
        return Ok(None);
    }
    if t.starts_with("41") || t == "1" {
        return Err(ConnError::Protocol("disconnected during handshake".into()));
    }
    if let Some(body) = t.strip_prefix("42") {
        if let Some((room, offset)) = sh.timing(body) {
            match sh.slot_of(conn, room) {
                Some(slot)
                    if sh.next[conn * sh.slots + slot].load(Ordering::Relaxed) != UNTRACKED =>
                {
                    sh.count(conn, room, offset)
                }
                _ => early.push((room.to_string(), offset)),
            }
            return Ok(None);
        }
    }
    Ok(Some(t))
}

fn entry_offset(v: &Value) -> u64 {
    v.get("offset").and_then(Value::as_u64).unwrap_or(0)
}

/// Connects, authenticates and joins; the connection is then in every room it tracks.
async fn handshake(sh: &Shared, conn: usize, target: usize) -> Result<Conn, ConnError> {
    let mut io = Conn::open(&sh.dial, source_of(sh, conn), sh.targets[target]).await?;
    let open_packet = io.recv().await?;
    if !open_packet.starts_with('0') {
        return Err(ConnError::Protocol(format!(
            "expected open packet, got {open_packet:.60}"
        )));
    }
    let sub = sh.sub(conn);
    let token = proto::token(&sh.key, sub, &sh.args.tenant, &sh.args.role, 6 * 3600);
    // Positions of a previous life of this connection (with --recover).
    let since: Vec<Option<Value>> = (0..sh.slots).map(|slot| sh.since(conn, slot)).collect();
    let mut auth = json!({ "token": token });
    if let Some(Some(s)) = sh.user_slot().map(|slot| since[slot].clone()) {
        auth["since"] = json!({ format!("user:{sub}"): s });
    }
    io.send(format!("40{auth}")).await?;
    // The stock client sends its connect on polling, then upgrades.
    if sh.dial.transport == Transport::Upgrade {
        io = io.upgrade(&sh.dial).await?;
    }
    // Reset what a previous life of this connection tracked.
    for slot in 0..sh.slots {
        sh.next[conn * sh.slots + slot].store(UNTRACKED, Ordering::Relaxed);
    }
    let mut early = Early::new();
    let mut connected = false;
    loop {
        let Some(t) = handshake_frame(sh, conn, &mut io, &mut early).await? else {
            continue;
        };
        if t.starts_with("40") {
            connected = true;
        } else if let Some(body) = t.strip_prefix("44") {
            return Err(ConnError::Refused(body.chars().take(100).collect()));
        } else if let Some(body) = t.strip_prefix("42[\"authenticated\",") {
            if !connected {
                return Err(ConnError::Protocol("authenticated before connect".into()));
            }
            if let Some(user) = sh.user_slot() {
                let v: Value = serde_json::from_str(body.trim_end_matches(']'))
                    .map_err(|e| ConnError::Protocol(format!("authenticated: {e}")))?;
                let name = format!("user:{sub}");
                let entry = v
                    .get("rooms")
                    .and_then(Value::as_array)
                    .and_then(|rooms| {
                        rooms
                            .iter()
                            .find(|r| r.get("room").and_then(Value::as_str) == Some(name.as_str()))
                    })
                    .cloned()
                    .unwrap_or(Value::Null);
                sh.enter_entry(conn, user, &entry);
            }
            break;
        }
    }
    let mut ack_id = 0u64;
    for (slot, room) in sh.rooms.iter().enumerate() {
        if room.below.is_some_and(|k| sub >= k) {
            continue;
        }
        ack_id += 1;
        let req = match &since[slot] {
            Some(s) => json!(["join", { "room": room.name, "since": s }]),
            None => json!(["join", room.name]),
        };
        io.send(format!("42{ack_id}{req}")).await?;
        loop {
            let Some(t) = handshake_frame(sh, conn, &mut io, &mut early).await? else {
                continue;
            };
            let Some((id, args)) = t.strip_prefix("43").and_then(proto::split_ack) else {
                continue;
            };
            if id != ack_id {
                continue;
            }
            let v: Value = serde_json::from_str(args)
                .map_err(|e| ConnError::Protocol(format!("join ack: {e}")))?;
            let first = v.get(0).cloned().unwrap_or(Value::Null);
            if first.get("ok").and_then(Value::as_bool) == Some(true) {
                sh.enter_entry(conn, slot, &first);
            } else {
                sh.c.join_failed.fetch_add(1, Ordering::Relaxed);
                sh.error(format!("join {}: {first}", room.name));
            }
            break;
        }
    }
    for (room, offset) in early {
        sh.count(conn, &room, offset);
    }
    Ok(io)
}

/// Holds an established connection: answers pings, counts deliveries. Returns why it ended.
async fn hold(sh: &Shared, conn: usize, io: &mut Conn) -> String {
    loop {
        let t = match io.recv().await {
            Ok(t) => t,
            Err(e) => return e.to_string(),
        };
        let t = t.as_str();
        if let Some(body) = t.strip_prefix("42") {
            if let Some((room, offset)) = sh.timing(body) {
                sh.count(conn, room, offset);
            }
        } else if t == "2" {
            if let Err(e) = io.send("3".into()).await {
                return format!("pong: {e}");
            }
        } else if t.starts_with("41") {
            return "server disconnected the socket".into();
        } else if t == "1" {
            return "server closed the session".into();
        }
    }
}
