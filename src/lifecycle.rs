//! The lifecycle stream: every connect, authenticate, join, leave and disconnect of an
//! authenticated socket, appended to its tenant's capped Redis stream
//! (`<prefix>:{<tenant>}:lifecycle`) for backends to read with `XREAD` or consumer groups.
//!
//! Entries are queued (bounded) and written in order by one task, pipelined. Each open
//! connection is also recorded under this gateway's incarnation (see
//! [`crate::presence::lease`]), so that when the gateway dies without a goodbye, whoever
//! notices writes one `disconnect` entry with reason `gateway_lost` per connection it held.
//! A full queue or an unreachable Redis drops entries, counted and logged, never blocking a
//! socket.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::events::envelope::now_millis;
use crate::events::ids::is_automatic_kind;
use crate::events::{RoomKey, TenantId, UserId};
use crate::metrics;
use crate::presence::lease::Fleet;

/// Entries waiting to be written, at most.
const QUEUE: usize = 16_384;
/// Entries written in one pipeline, at most.
const MAX_BATCH: usize = 256;

/// What an entry does to the record of open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Open,
    Close,
    None,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Close => "close",
            Op::None => "none",
        }
    }
}

/// One entry to append.
#[derive(Debug, Clone)]
struct Entry {
    tenant: TenantId,
    op: Op,
    socket: u64,
    user: UserId,
    transport: &'static str,
    kind: &'static str,
    room: Option<String>,
    reason: Option<&'static str>,
    timestamp: i64,
}

/// A socket as the lifecycle stream names it.
#[derive(Debug, Clone, Copy)]
pub struct Socket<'a> {
    /// Gateway-wide socket id (unique together with the gateway).
    pub id: u64,
    /// Who it is.
    pub identity: &'a Identity,
    /// `websocket` or `polling`.
    pub transport: &'static str,
}

/// The lifecycle stream of one gateway (a no-op unless `GATEWAY_LIFECYCLE=on`).
pub struct Lifecycle {
    queue: Option<mpsc::Sender<Entry>>,
    receiver: Mutex<Option<mpsc::Receiver<Entry>>>,
    /// Open connections (each one's `connect` entry), for asserting them again under a new
    /// incarnation.
    live: Mutex<HashMap<u64, Entry>>,
}

fn dropped(reason: &'static str, n: usize) {
    ::metrics::counter!(metrics::LIFECYCLE_DROPPED, "reason" => reason).increment(n as u64);
}

impl Lifecycle {
    /// A lifecycle stream that is written when `on`.
    pub fn new(on: bool) -> Self {
        let (queue, receiver) = if on {
            let (tx, rx) = mpsc::channel(QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Self {
            queue,
            receiver: Mutex::new(receiver),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn push(
        &self,
        s: Socket<'_>,
        kind: &'static str,
        op: Op,
        room: Option<&RoomKey>,
        reason: Option<&'static str>,
    ) {
        let Some(queue) = &self.queue else { return };
        let entry = Entry {
            tenant: s.identity.tenant.clone(),
            op,
            socket: s.id,
            user: s.identity.user_id.clone(),
            transport: s.transport,
            kind,
            room: room.map(|r| r.room().as_str().to_string()),
            reason,
            timestamp: now_millis(),
        };
        if op == Op::Open {
            self.live.lock().insert(s.id, entry.clone());
        }
        if queue.try_send(entry).is_err() {
            dropped("queue_full", 1);
            tracing::warn!(
                socket = s.id,
                kind,
                "lifecycle entry dropped: the queue is full (Redis slow or down)"
            );
        }
    }

    /// A socket authenticated: `connect` (recording the connection) and `authenticate`.
    pub fn authenticated(&self, s: Socket<'_>) {
        self.push(s, "connect", Op::Open, None, None);
        self.push(s, "authenticate", Op::None, None, None);
    }

    /// A socket entered a room it asked for (automatic rooms are implied by `connect`).
    pub fn joined(&self, s: Socket<'_>, key: &RoomKey) {
        if !is_automatic_kind(key.room().kind()) {
            self.push(s, "join", Op::None, Some(key), None);
        }
    }

    /// A socket left a room it had asked for.
    pub fn left(&self, s: Socket<'_>, key: &RoomKey) {
        if !is_automatic_kind(key.room().kind()) {
            self.push(s, "leave", Op::None, Some(key), None);
        }
    }

    /// An authenticated socket disconnected, for `reason`.
    pub fn disconnected(&self, s: Socket<'_>, reason: &'static str) {
        if self.queue.is_none() {
            return;
        }
        self.live.lock().remove(&s.id);
        self.push(s, "disconnect", Op::Close, None, Some(reason));
    }

    /// Writes queued entries until `stop`, then what is left in the queue.
    pub async fn run(self: Arc<Self>, fleet: Arc<Fleet>, stop: CancellationToken) {
        let Some(mut rx) = self.receiver.lock().take() else {
            return;
        };
        let mut generations = fleet.generations();
        let mut indexed: HashSet<TenantId> = HashSet::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                Ok(()) = generations.changed() => {
                    indexed.clear();
                    batch.extend(self.reassert());
                }
                _ = stop.cancelled() => {
                    rx.close();
                    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                        write(&fleet, &mut indexed, std::mem::take(&mut batch)).await;
                    }
                    return;
                }
            }
            let lapsed = write(&fleet, &mut indexed, std::mem::take(&mut batch)).await;
            if !lapsed.is_empty() {
                // Written again once the lease is renewed (the writer waits for that).
                tokio::time::sleep(fleet.retry_delay()).await;
                batch = lapsed;
            }
        }
    }

    /// `connect` entries (reason `reasserted`) recording every open connection again.
    fn reassert(&self) -> Vec<Entry> {
        let now = now_millis();
        self.live
            .lock()
            .values()
            .map(|connect| Entry {
                reason: Some("reasserted"),
                timestamp: now,
                ..connect.clone()
            })
            .collect()
    }
}

/// Writes one batch in order; tenants new to this incarnation are indexed first, so a reaper
/// finds their connections. Returns the `open` entries refused for a lapsed lease.
async fn write(fleet: &Fleet, indexed: &mut HashSet<TenantId>, batch: Vec<Entry>) -> Vec<Entry> {
    if batch.is_empty() {
        return Vec::new();
    }
    let inc = fleet.incarnation();
    let keys = fleet.keys();
    let gateway = inc.id.to_string();
    let fresh: Vec<&str> = batch
        .iter()
        .filter(|e| e.op == Op::Open && !indexed.contains(&e.tenant))
        .map(|e| e.tenant.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let result: Result<Vec<redis::Value>, _> = fleet
        .query(|| {
            let mut p = redis::pipe();
            if !fresh.is_empty() {
                p.cmd("SADD")
                    .arg(keys.tenants_index(&inc.id))
                    .arg(&fresh)
                    .ignore();
            }
            for e in &batch {
                let socket = e.socket.to_string();
                p.cmd("FCALL")
                    .arg("rtg_lifecycle")
                    .arg(2)
                    .arg(keys.lifecycle(&e.tenant))
                    .arg(keys.connections(&e.tenant, &inc.id))
                    .arg(inc.deadline)
                    .arg(fleet.config().lifecycle_max_len)
                    .arg(e.op.as_str())
                    .arg(&socket)
                    .arg(format!("{}|{}", e.user.as_str(), e.transport))
                    .arg("type")
                    .arg(e.kind)
                    .arg("userId")
                    .arg(e.user.as_str());
                if let Some(room) = &e.room {
                    p.arg("room").arg(room);
                }
                p.arg("socketId").arg(&socket).arg("gateway").arg(&gateway);
                if let Some(reason) = e.reason {
                    p.arg("reason").arg(reason);
                }
                p.arg("transport")
                    .arg(e.transport)
                    .arg("timestamp")
                    .arg(e.timestamp);
            }
            p
        })
        .await;
    match result {
        Ok(ids) => {
            indexed.extend(fresh.iter().filter_map(|t| TenantId::parse(t).ok()));
            // An `open` refused for a lapsed lease wrote nothing: it is written again.
            let lapsed: Vec<Entry> = batch
                .iter()
                .zip(&ids)
                .filter(|(_, id)| matches!(id, redis::Value::Int(0)))
                .map(|(e, _)| e.clone())
                .collect();
            ::metrics::counter!(metrics::LIFECYCLE_ENTRIES)
                .increment((ids.len() - lapsed.len()) as u64);
            if !lapsed.is_empty() {
                fleet.lapsed();
            }
            lapsed
        }
        Err(e) => {
            dropped("bus_unavailable", batch.len());
            tracing::warn!(error = %e, entries = batch.len(), "lifecycle entries dropped: Redis is unavailable");
            Vec::new()
        }
    }
}
