//! Presence: who is in a room right now, per user (a user with three tabs is one member with
//! three connections), exact across the fleet.
//!
//! Each gateway keeps a table of its own sockets per tracked room and user, and a writer task
//! brings the store in line with it: it writes "this gateway holds `n` connections of this user
//! here" for every pair that changed (coalesced, so churn costs one write per pair and batch),
//! never a stream of deltas that a lost write would corrupt. On Redis the store sums every
//! gateway's share and emits `presence_join` / `presence_leave` when a user's count leaves or
//! reaches zero; each gateway's share lives under its lease ([`lease`]), so a gateway that dies
//! has its members removed, with their leaves, by whoever notices first.
//!
//! - `config.rs`: the validated settings (their flags are parsed with the gateway's other settings); `store.rs`: the Redis and in-process stores; `lease.rs`: leases,
//!   incarnations and the reaping of lost gateways; `fleet.lua`: the Redis functions.

mod config;
pub mod lease;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::events::{RoomKey, RoomName, UserId};
use crate::metrics;
pub use config::PresenceConfig;
use lease::Fleet;
use store::{Outcome, Store, Write};

/// Most pairs written in one batch.
const MAX_BATCH: usize = 512;

/// One member of a room in a presence answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their role (as their latest connection's token says).
    pub role: String,
    /// Their connections to the room, across the fleet.
    pub connections: u32,
}

/// A presence answer: `{ room, count, members? , truncated? }`.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The room (client-facing name).
    pub room: RoomName,
    /// Members (users) in the room.
    pub count: usize,
    /// The members, by user id; absent for counts-only rooms and rooms over the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
    /// Set when the room had more members than an answer lists.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Answer {
    fn listed(key: &RoomKey, mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Self {
            room: key.room().clone(),
            count: members.len(),
            members: Some(members),
            truncated: false,
        }
    }

    fn counted(key: &RoomKey, count: usize, truncated: bool) -> Self {
        Self {
            room: key.room().clone(),
            count,
            members: None,
            truncated,
        }
    }
}

/// Why a presence question has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The room's kind has no presence on this deployment.
    #[error("rooms of kind {0} have no presence; tracked kinds are {1}")]
    NotEnabled(String, String),
    /// The store could not be read.
    #[error("presence is unavailable right now (the bus is down); try again shortly")]
    Unavailable,
}

impl PresenceError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            PresenceError::NotEnabled(..) => "presence_not_enabled",
            PresenceError::Unavailable => "presence_unavailable",
        }
    }
}

/// This gateway's sockets per tracked room and user, and the pairs not yet written.
#[derive(Default)]
struct Table {
    rooms: HashMap<RoomKey, HashMap<UserId, (u32, String)>>,
    members: usize,
    dirty: HashSet<(RoomKey, UserId)>,
    /// Counts changes; the writer reports how far it has written (see `Presence::flushed`).
    seq: u64,
}

/// Presence of one gateway: the hooks the socket side calls, the reads, the writer.
pub struct Presence {
    config: PresenceConfig,
    table: Mutex<Table>,
    wake: Notify,
    store: Store,
    /// The change count up to which everything is written: a read waits (briefly) for this
    /// gateway's own changes, so a socket that just joined finds itself in the answer.
    flushed: tokio::sync::watch::Sender<u64>,
}

/// Longest a read waits for this gateway's pending writes before answering anyway.
const READ_OWN_WRITES: std::time::Duration = std::time::Duration::from_millis(500);

impl Presence {
    /// Presence over `store` with `config`.
    pub fn new(config: PresenceConfig, store: Store) -> Self {
        Self {
            config,
            table: Mutex::new(Table::default()),
            wake: Notify::new(),
            store,
            flushed: tokio::sync::watch::channel(0).0,
        }
    }

    /// A socket of `who` entered `key` (called once per entry, by the room membership).
    pub fn entered(&self, key: &RoomKey, who: &Identity) {
        self.change(key, who, true);
    }

    /// A socket of `who` left `key` (once per earlier entry).
    pub fn left(&self, key: &RoomKey, who: &Identity) {
        self.change(key, who, false);
    }

    fn change(&self, key: &RoomKey, who: &Identity, entered: bool) {
        if !self.config.tracks(key.room()) {
            return;
        }
        let mut t = self.table.lock();
        let room = t.rooms.entry(key.clone()).or_default();
        let before = room.len();
        match room.get_mut(&who.user_id) {
            Some(entry) if entered => {
                entry.0 += 1;
                entry.1.clone_from(&who.role);
            }
            Some(entry) => {
                entry.0 -= 1;
                if entry.0 == 0 {
                    room.remove(&who.user_id);
                }
            }
            None if entered => {
                room.insert(who.user_id.clone(), (1, who.role.clone()));
            }
            None => return,
        }
        let after = room.len();
        if after == 0 {
            t.rooms.remove(key);
        }
        t.members = t.members + after - before;
        t.seq += 1;
        t.dirty.insert((key.clone(), who.user_id.clone()));
        ::metrics::gauge!(metrics::PRESENCE_MEMBERS).set(t.members as f64);
        ::metrics::gauge!(metrics::PRESENCE_ROOMS).set(t.rooms.len() as f64);
        drop(t);
        self.wake.notify_one();
    }

    /// Whether rooms like `room` have presence here (`presence_not_enabled` if not).
    pub fn tracked(&self, room: &RoomName) -> Result<(), PresenceError> {
        if self.config.tracks(room) {
            return Ok(());
        }
        let mut kinds: Vec<&str> = self.config.kinds.iter().map(String::as_str).collect();
        kinds.sort_unstable();
        let kinds = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        };
        Err(PresenceError::NotEnabled(room.kind().to_string(), kinds))
    }

    /// The members of `key`, across the fleet. The caller checked that the asker may see them.
    pub async fn read(&self, key: &RoomKey) -> Result<Answer, PresenceError> {
        let room = key.room();
        self.tracked(room)?;
        let start = Instant::now();
        let want = self.table.lock().seq;
        let mut flushed = self.flushed.subscribe();
        let _ = tokio::time::timeout(READ_OWN_WRITES, flushed.wait_for(|&f| f >= want)).await;
        let listed = self.config.lists_members(room);
        let max = if listed { self.config.max_members } else { 0 };
        let answer = self.store.read(key, max).await;
        ::metrics::histogram!(metrics::PRESENCE_READ_DURATION)
            .record(start.elapsed().as_secs_f64());
        let answer = answer?;
        Ok(if listed {
            answer
        } else {
            Answer::counted(key, answer.count, false)
        })
    }

    /// Marks every pair this gateway holds as changed (a new incarnation must assert them all).
    fn mark_all(&self) {
        let mut t = self.table.lock();
        let pairs: Vec<(RoomKey, UserId)> = t
            .rooms
            .iter()
            .flat_map(|(k, users)| users.keys().map(move |u| (k.clone(), u.clone())))
            .collect();
        t.dirty.extend(pairs);
        drop(t);
        self.wake.notify_one();
    }

    /// Takes up to [`MAX_BATCH`] changed pairs with what this gateway holds of each now, and
    /// the change count that writing them completes (`None` if more are left).
    fn take_batch(&self) -> (Vec<Write>, Option<u64>) {
        let mut t = self.table.lock();
        let pairs: Vec<(RoomKey, UserId)> = t.dirty.iter().take(MAX_BATCH).cloned().collect();
        let mut writes = Vec::with_capacity(pairs.len());
        for pair in pairs {
            t.dirty.remove(&pair);
            let (key, user) = pair;
            let (connections, role) = t
                .rooms
                .get(&key)
                .and_then(|r| r.get(&user))
                .cloned()
                .unwrap_or((0, String::new()));
            writes.push(Write {
                key,
                user,
                role,
                connections,
            });
        }
        let complete = t.dirty.is_empty().then_some(t.seq);
        (writes, complete)
    }

    fn mark(&self, writes: impl IntoIterator<Item = Write>) {
        let mut t = self.table.lock();
        t.dirty.extend(writes.into_iter().map(|w| (w.key, w.user)));
    }

    /// Writes changed pairs to the store until `shutdown`, then once more (what the last
    /// disconnects changed), so a gateway that exits cleanly leaves nothing behind.
    pub async fn run(self: Arc<Self>, fleet: Option<Arc<Fleet>>, shutdown: CancellationToken) {
        let mut generations = fleet.as_ref().map(|f| f.generations());
        let retry = fleet
            .as_ref()
            .map(|f| f.retry_delay())
            .unwrap_or(std::time::Duration::from_millis(100));
        loop {
            // A new incarnation holds nothing yet: assert every pair, however busy the writer.
            if let Some(g) = generations.as_mut() {
                if g.has_changed().unwrap_or(false) {
                    g.borrow_and_update();
                    self.mark_all();
                }
            }
            let (batch, completes) = self.take_batch();
            if batch.is_empty() {
                if let Some(seq) = completes {
                    self.flushed
                        .send_if_modified(|f| std::mem::replace(f, seq) != seq);
                }
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => {}
                    Ok(()) = async {
                        match generations.as_mut() {
                            Some(g) => g.changed().await,
                            None => std::future::pending().await,
                        }
                    } => self.mark_all(),
                }
                continue;
            }
            let emits = |k: &RoomKey| self.config.emits(k.room());
            match self.store.apply(&batch, emits).await {
                Ok(outcomes) => {
                    let mut lapsed = Vec::new();
                    for (w, o) in batch.into_iter().zip(outcomes) {
                        if o == Outcome::Lapsed {
                            lapsed.push(w);
                        }
                    }
                    let n = lapsed.len();
                    if n == 0 {
                        ::metrics::counter!(metrics::PRESENCE_WRITES, "result" => "ok")
                            .increment(1);
                        if let Some(seq) = completes {
                            self.flushed.send_replace(seq);
                        }
                    } else {
                        ::metrics::counter!(metrics::PRESENCE_WRITES, "result" => "lapsed")
                            .increment(1);
                        self.mark(lapsed);
                        if let Some(f) = &fleet {
                            f.lapsed();
                        }
                        tokio::time::sleep(retry).await;
                    }
                }
                Err(e) => {
                    ::metrics::counter!(metrics::PRESENCE_WRITES, "result" => "error").increment(1);
                    tracing::warn!(error = %e, pairs = batch.len(), "presence not written; trying again");
                    self.mark(batch);
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}
