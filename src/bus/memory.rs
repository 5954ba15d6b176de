//! The embedded bus: one process, no Redis. Same contract as the Redis bus: contiguous offsets
//! per room starting at 1, deliveries in offset order, and a bounded history per room (count and
//! idle time) with an epoch, so recovery works the same on one node.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::Mutex;

use super::{Bus, BusError, BusMessage, Delivery, DeliverySender, Lost, Position, Recovery};
use crate::events::{Event, RoomKey};

struct RoomHistory {
    epoch: Arc<str>,
    offset: u64,
    events: VecDeque<(u64, Arc<Event>)>,
    touched: Instant,
}

impl RoomHistory {
    fn new() -> Self {
        Self {
            epoch: Arc::from(ulid::Ulid::new().to_string()),
            offset: 0,
            events: VecDeque::new(),
            touched: Instant::now(),
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

struct Rooms {
    map: HashMap<RoomKey, RoomHistory>,
    last_sweep: Instant,
}

/// In-process bus for a single gateway.
pub struct MemoryBus {
    /// A tokio mutex because it is held while the delivery is queued: that keeps deliveries in
    /// offset order when several publishers race on one room.
    rooms: Mutex<Rooms>,
    deliveries: DeliverySender,
    max_len: usize,
    ttl: Duration,
}

impl MemoryBus {
    /// A bus that hands every published event to `deliveries` and keeps at most `max_len`
    /// events per room, forgetting a room `ttl` after its last event.
    pub fn new(deliveries: DeliverySender, max_len: usize, ttl: Duration) -> Self {
        Self {
            rooms: Mutex::new(Rooms {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            deliveries,
            max_len: max_len.max(1),
            ttl,
        }
    }
}

impl Rooms {
    /// Drops rooms idle for longer than `ttl` (at most once per `ttl / 4`), as Redis expiry would.
    fn sweep(&mut self, ttl: Duration) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < ttl / 4 {
            return;
        }
        self.last_sweep = now;
        self.map.retain(|_, r| now.duration_since(r.touched) < ttl);
    }

    fn room(&mut self, key: &RoomKey, ttl: Duration) -> &mut RoomHistory {
        let stale = self
            .map
            .get(key)
            .is_some_and(|r| r.touched.elapsed() >= ttl);
        if stale {
            self.map.remove(key);
        }
        self.map.entry(key.clone()).or_insert_with(RoomHistory::new)
    }
}

impl Bus for MemoryBus {
    fn publish(
        &self,
        event: Arc<Event>,
        rooms: Vec<RoomKey>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        async move {
            let mut state = self.rooms.lock().await;
            state.sweep(self.ttl);
            let mut out = Vec::with_capacity(rooms.len());
            for key in rooms {
                let room = state.room(&key, self.ttl);
                room.offset += 1;
                room.touched = Instant::now();
                let offset = room.offset;
                room.events.push_back((offset, event.clone()));
                if room.events.len() > self.max_len {
                    room.events.pop_front();
                }
                self.deliveries
                    .send(BusMessage::Event(Delivery {
                        key,
                        offset,
                        epoch: room.epoch.clone(),
                        event: event.clone(),
                    }))
                    .await
                    .map_err(|_| BusError::Unavailable("the gateway is shutting down".into()))?;
                out.push(offset);
            }
            Ok(out)
        }
        .boxed()
    }

    fn position<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<Position, BusError>> {
        async move { Ok(self.rooms.lock().await.room(room, self.ttl).position()) }.boxed()
    }

    fn recover<'a>(
        &'a self,
        room: &'a RoomKey,
        since: &'a Position,
        max: u64,
    ) -> BoxFuture<'a, Result<Recovery, BusError>> {
        async move {
            let mut state = self.rooms.lock().await;
            let room = state.room(room, self.ttl);
            let now = room.position();
            let lost = |reason| {
                Ok(Recovery::Lost {
                    reason,
                    now: now.clone(),
                })
            };
            if since.epoch != room.epoch {
                return lost(Lost::EpochChanged);
            }
            if since.offset > room.offset {
                return lost(Lost::Future);
            }
            let missed = room.offset - since.offset;
            if missed > max {
                return lost(Lost::TooMany);
            }
            let events: Vec<(u64, Arc<Event>)> = room
                .events
                .iter()
                .filter(|(o, _)| *o > since.offset)
                .cloned()
                .collect();
            if events.len() as u64 != missed {
                return lost(Lost::TooOld);
            }
            Ok(Recovery::Replay { events, now })
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        !self.deliveries.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RoomName, TenantId};
    use serde_json::value::RawValue;

    fn event(id: &str) -> Arc<Event> {
        Arc::new(Event {
            id: id.into(),
            channel: "incident".into(),
            event: "incident_reported".into(),
            tenant: "1".into(),
            payload: RawValue::from_string("{}".into()).unwrap(),
            timestamp: 0,
        })
    }

    fn key(room: &str) -> RoomKey {
        RoomKey::new(
            TenantId::parse("1").unwrap(),
            RoomName::parse(room, 64).unwrap(),
        )
    }

    #[tokio::test]
    async fn offsets_are_contiguous_per_room() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let bus = MemoryBus::new(tx, 10, Duration::from_secs(60));
        let (a, b) = (key("batch:1"), key("batch:2"));
        assert_eq!(
            bus.publish(event("e1"), vec![a.clone(), b.clone()])
                .await
                .unwrap(),
            vec![1, 1]
        );
        assert_eq!(
            bus.publish(event("e2"), vec![a.clone()]).await.unwrap(),
            vec![2]
        );
        let got: Vec<(String, u64)> = (0..3)
            .map(|_| match rx.try_recv().unwrap() {
                BusMessage::Event(d) => (d.key.to_string(), d.offset),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("1/batch:1".into(), 1),
                ("1/batch:2".into(), 1),
                ("1/batch:1".into(), 2)
            ]
        );
    }

    #[tokio::test]
    async fn recovery_replays_or_says_why_not() {
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        let bus = MemoryBus::new(tx, 3, Duration::from_secs(60));
        let room = key("exam:1");
        let start = bus.position(&room).await.unwrap();
        assert_eq!(start.offset, 0);
        for i in 0..5 {
            bus.publish(event(&format!("e{i}")), vec![room.clone()])
                .await
                .unwrap();
        }
        let at = |offset| Position {
            epoch: start.epoch.clone(),
            offset,
        };
        match bus.recover(&room, &at(3), 10).await.unwrap() {
            Recovery::Replay { events, now } => {
                assert_eq!(
                    events.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
                    vec![4, 5]
                );
                assert_eq!(now.offset, 5);
            }
            other => panic!("{other:?}"),
        }
        let reason = |r: Recovery| match r {
            Recovery::Lost { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(bus.recover(&room, &at(1), 10).await.unwrap()),
            Lost::TooOld
        );
        assert_eq!(
            reason(bus.recover(&room, &at(9), 10).await.unwrap()),
            Lost::Future
        );
        assert_eq!(
            reason(bus.recover(&room, &at(2), 2).await.unwrap()),
            Lost::TooMany
        );
        let other_epoch = Position {
            epoch: "x".into(),
            offset: 5,
        };
        assert_eq!(
            reason(bus.recover(&room, &other_epoch, 10).await.unwrap()),
            Lost::EpochChanged
        );
        match bus.recover(&room, &at(5), 10).await.unwrap() {
            Recovery::Replay { events, .. } => assert!(events.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
