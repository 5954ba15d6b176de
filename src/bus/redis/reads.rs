//! Coalesced history reads: when many sockets recover the same room from the same position at
//! once (a gateway died and its clients all come back), Redis answers one read for all of them.
//!
//! A socket's read must start after the socket began buffering the room's live events, or
//! events published in between would be in neither. So a request never joins a read already
//! under way: it joins the *next* read, which starts when the current one ends and serves every
//! request that arrived meanwhile. Identical requests thus cost at most two reads in flight,
//! however many sockets ask.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use parking_lot::Mutex;

use crate::bus::{BusError, Position, Recovery};
use crate::events::RoomKey;

type Read = Shared<BoxFuture<'static, Result<Recovery, BusError>>>;

/// What identifies two reads as the same.
type ReadKey = (RoomKey, Arc<str>, u64, u64);

/// A read and whether it has been sent to Redis.
#[derive(Clone)]
struct Flight {
    read: Read,
    started: Arc<AtomicBool>,
}

#[derive(Default)]
struct Flights {
    /// The read under way, if any.
    current: Option<Flight>,
    /// The read that new requests join; starts when `current` ends.
    next: Option<Flight>,
}

/// Identical history reads in flight, by room, position and limit.
#[derive(Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<ReadKey, Flights>>,
}

impl Coalescer {
    /// Runs `read` for `(room, since, max)`, or joins the next identical read.
    pub async fn recover<F>(
        &self,
        room: &RoomKey,
        since: &Position,
        max: u64,
        read: F,
    ) -> Result<Recovery, BusError>
    where
        F: std::future::Future<Output = Result<Recovery, BusError>> + Send + 'static,
    {
        let key: ReadKey = (room.clone(), since.epoch.clone(), since.offset, max);
        let mine = {
            let mut all = self.flights.lock();
            let f = all.entry(key.clone()).or_default();
            match &f.next {
                Some(next) if !next.started.load(Ordering::SeqCst) => next.clone(),
                _ => {
                    // The previous "next" has started: it becomes the current read, and a new
                    // one waits for it.
                    if let Some(started) = f.next.take() {
                        f.current = Some(started);
                    }
                    let before = f.current.as_ref().map(|c| c.read.clone());
                    let started = Arc::new(AtomicBool::new(false));
                    let flag = started.clone();
                    let read = async move {
                        if let Some(before) = before {
                            let _ = before.await;
                        }
                        flag.store(true, Ordering::SeqCst);
                        read.await
                    }
                    .boxed()
                    .shared();
                    let flight = Flight { read, started };
                    f.next = Some(flight.clone());
                    flight
                }
            }
        };
        let result = mine.read.clone().await;
        let mut all = self.flights.lock();
        if let Some(f) = all.get_mut(&key) {
            let is_mine =
                |x: &Option<Flight>| x.as_ref().is_some_and(|x| x.read.ptr_eq(&mine.read));
            if is_mine(&f.current) {
                f.current = None;
            }
            if is_mine(&f.next) {
                f.next = None;
            }
            if f.current.is_none() && f.next.is_none() {
                all.remove(&key);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RoomName, TenantId};
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    #[tokio::test]
    async fn identical_reads_share_at_most_two_flights_and_none_started_before_them() {
        let c = Arc::new(Coalescer::default());
        let room = RoomKey::new(
            TenantId::parse("1").unwrap(),
            RoomName::parse("batch:1", 64).unwrap(),
        );
        let since = Position {
            epoch: Arc::from("e"),
            offset: 3,
        };
        let reads = Arc::new(AtomicU64::new(0));
        let read = |reads: Arc<AtomicU64>| async move {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Recovery::Lost {
                reason: crate::bus::Lost::TooOld,
                now: Position {
                    epoch: Arc::from("e"),
                    offset: 9,
                },
            })
        };
        // One read starts; 50 more requests arrive while it runs.
        let first = {
            let (c, room, since, reads) = (c.clone(), room.clone(), since.clone(), reads.clone());
            tokio::spawn(async move { c.recover(&room, &since, 10, read(reads)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut later = Vec::new();
        for _ in 0..50 {
            let (c, room, since, reads) = (c.clone(), room.clone(), since.clone(), reads.clone());
            later.push(tokio::spawn(async move {
                c.recover(&room, &since, 10, read(reads)).await
            }));
        }
        assert!(first.await.unwrap().is_ok());
        for l in later {
            assert!(l.await.unwrap().is_ok());
        }
        // The first read, and one more for everyone who came while it ran.
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert!(c.flights.lock().is_empty());
    }
}
