//! Where presence lives: in Redis for the fleet (each gateway's share under its lease), or in
//! process on the embedded bus. Both take the same writes, "this gateway holds `n` connections
//! of this user in this room", and answer the same reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;
use serde_json::value::RawValue;

use super::lease::Fleet;
use super::{Answer, Member, PresenceError};
use crate::bus::{Bus, BusError};
use crate::events::envelope::{now_millis, PRESENCE_JOIN, PRESENCE_LEAVE};
use crate::events::{Event, RoomKey, UserId};

/// One write: how many connections this gateway holds for `user` in `key` now.
#[derive(Debug, Clone)]
pub struct Write {
    /// The room.
    pub key: RoomKey,
    /// The user.
    pub user: UserId,
    /// Their role (the latest connection's).
    pub role: String,
    /// Connections on this gateway (0: none left).
    pub connections: u32,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; `gateway_empty` when this gateway has no entry left in the room.
    Applied {
        /// This gateway has no member left in the room.
        gateway_empty: bool,
    },
    /// Refused: the lease lapsed. Write it again under the next incarnation.
    Lapsed,
}

/// The presence backend.
pub enum Store {
    /// The embedded bus: one node, events published through the bus.
    Memory(MemoryStore),
    /// Redis: fleet-wide, under this gateway's lease.
    Redis(Arc<Fleet>),
}

impl Store {
    /// Applies writes in order.
    pub async fn apply(
        &self,
        writes: &[Write],
        emits: impl Fn(&RoomKey) -> bool,
    ) -> Result<Vec<Outcome>, BusError> {
        match self {
            Store::Memory(m) => m.apply(writes, emits).await,
            Store::Redis(fleet) => apply_redis(fleet, writes).await,
        }
    }

    /// The room's members (at most `max` listed).
    pub async fn read(&self, key: &RoomKey, max: usize) -> Result<Answer, PresenceError> {
        match self {
            Store::Memory(m) => Ok(m.read(key, max)),
            Store::Redis(fleet) => read_redis(fleet, key, max).await,
        }
    }
}

async fn apply_redis(fleet: &Fleet, writes: &[Write]) -> Result<Vec<Outcome>, BusError> {
    let inc = fleet.incarnation();
    let keys = fleet.keys();
    let index = keys.rooms_index(&inc.id);
    let replies: Vec<(i64, i64)> = fleet
        .query(|| {
            let mut p = redis::pipe();
            // Index the rooms first: whoever reaps this incarnation finds them there.
            let mut rooms: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
            rooms.sort_unstable();
            rooms.dedup();
            p.cmd("SADD").arg(&index).arg(&rooms).ignore();
            for w in writes {
                let names = fleet.settings().names(&w.key);
                p.cmd("FCALL")
                    .arg("rtg_presence_set")
                    .arg(4)
                    .arg(keys.members(&w.key))
                    .arg(keys.gateway_members(&w.key, &inc.id))
                    .arg(&names.stream)
                    .arg(&names.meta)
                    .arg(inc.deadline)
                    .arg(w.user.as_str())
                    .arg(&w.role)
                    .arg(w.connections);
                fleet.event_args(&mut p, &w.key);
            }
            p
        })
        .await?;
    let outcomes: Vec<Outcome> = replies
        .iter()
        .map(|&(change, left)| match change {
            -1 => Outcome::Lapsed,
            _ => Outcome::Applied {
                gateway_empty: left == 0,
            },
        })
        .collect();
    // Rooms where this gateway has nothing left leave the index (the last write of the room in
    // this batch decides; the writer is the only one writing under this incarnation).
    let mut last: HashMap<&str, bool> = HashMap::new();
    for (w, o) in writes.iter().zip(&outcomes) {
        if let Outcome::Applied { gateway_empty } = o {
            last.insert(w.key.as_str(), *gateway_empty);
        }
    }
    let empty: Vec<&str> = last
        .into_iter()
        .filter(|(_, e)| *e)
        .map(|(r, _)| r)
        .collect();
    if !empty.is_empty() {
        fleet
            .query::<()>(|| {
                let mut p = redis::pipe();
                p.cmd("SREM").arg(&index).arg(&empty).ignore();
                p
            })
            .await?;
    }
    Ok(outcomes)
}

async fn read_redis(fleet: &Fleet, key: &RoomKey, max: usize) -> Result<Answer, PresenceError> {
    let members = fleet.keys().members(key);
    let (reply,): (Vec<redis::Value>,) = fleet
        .query(|| {
            let mut p = redis::pipe();
            p.cmd("FCALL_RO")
                .arg("rtg_presence_read")
                .arg(1)
                .arg(&members)
                .arg(max);
            p
        })
        .await
        .map_err(|_| PresenceError::Unavailable)?;
    let bad = || PresenceError::Unavailable;
    let count: usize = reply
        .first()
        .and_then(|v| redis::from_redis_value_ref(v).ok())
        .ok_or_else(bad)?;
    if reply.len() == 1 && count > 0 {
        return Ok(Answer::counted(key, count, true));
    }
    let mut list = Vec::with_capacity(count);
    for pair in reply[1..].chunks(2) {
        let (Some(user), Some(value)) = (pair.first(), pair.get(1)) else {
            return Err(bad());
        };
        let user: String = redis::from_redis_value_ref(user).map_err(|_| bad())?;
        let value: String = redis::from_redis_value_ref(value).map_err(|_| bad())?;
        let (connections, role) = value.split_once('|').ok_or_else(bad)?;
        list.push(Member {
            user_id: user,
            role: role.to_string(),
            connections: connections.parse().map_err(|_| bad())?,
        });
    }
    Ok(Answer::listed(key, list))
}

/// Members of each room on a single node: user → (connections, role).
type Rooms = HashMap<RoomKey, BTreeMap<UserId, (u32, String)>>;

/// Presence of a single node: the same writes, kept in process, with events published through
/// the embedded bus.
pub struct MemoryStore {
    /// A std mutex: held for map updates only, never across an await.
    rooms: Mutex<Rooms>,
    bus: Arc<dyn Bus>,
}

impl MemoryStore {
    /// Empty presence publishing its events on `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            bus,
        }
    }

    async fn apply(
        &self,
        writes: &[Write],
        emits: impl Fn(&RoomKey) -> bool,
    ) -> Result<Vec<Outcome>, BusError> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let change = {
                let mut rooms = self.rooms.lock();
                let room = rooms.entry(w.key.clone()).or_default();
                let before = room.get(&w.user).cloned();
                let change = if w.connections > 0 {
                    room.insert(w.user.clone(), (w.connections, w.role.clone()));
                    before.is_none().then(|| (PRESENCE_JOIN, w.role.clone()))
                } else {
                    room.remove(&w.user);
                    before.map(|(_, role)| (PRESENCE_LEAVE, role))
                };
                let empty = room.is_empty();
                if empty {
                    rooms.remove(&w.key);
                }
                out.push(Outcome::Applied {
                    gateway_empty: empty,
                });
                change
            };
            if let (Some((name, role)), true) = (change, emits(&w.key)) {
                let payload = json!({ "room": w.key.room(), "userId": w.user, "role": role });
                let event = Event {
                    id: Arc::from(ulid::Ulid::new().to_string()),
                    channel: Arc::from(name),
                    event: Arc::from(name),
                    tenant: Arc::from(w.key.tenant().as_str()),
                    payload: RawValue::from_string(payload.to_string())
                        .map_err(|e| BusError::Rejected(e.to_string()))?,
                    timestamp: now_millis(),
                };
                self.bus
                    .publish(Arc::new(event), vec![w.key.clone()])
                    .await?;
            }
        }
        Ok(out)
    }

    fn read(&self, key: &RoomKey, max: usize) -> Answer {
        let rooms = self.rooms.lock();
        let Some(room) = rooms.get(key) else {
            return Answer::listed(key, Vec::new());
        };
        if room.len() > max {
            return Answer::counted(key, room.len(), true);
        }
        let list = room
            .iter()
            .map(|(user, (n, role))| Member {
                user_id: user.as_str().to_string(),
                role: role.clone(),
                connections: *n,
            })
            .collect();
        Answer::listed(key, list)
    }
}
