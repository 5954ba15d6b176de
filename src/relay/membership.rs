//! Which rooms this gateway serves, and how many of its sockets are in each (entering or
//! entered): the bus is subscribed to a room from its first socket to its last. Kept beside
//! the relay's members, behind the same handle, so one owner decides both delivery and
//! subscription; counted at once (not in the relay task) so a join's subscription starts
//! before the join waits for anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bus::Bus;
use crate::events::RoomKey;
use crate::metrics;

/// Member counts per room served by this gateway.
pub struct Membership {
    /// A std mutex: held for a map lookup only, never across an await.
    counts: Mutex<HashMap<RoomKey, usize>>,
    bus: Arc<dyn Bus>,
}

impl Membership {
    /// Empty membership that subscribes and unsubscribes through `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            bus,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, usize>> {
        // A panic elsewhere cannot leave the counts half-updated, so a poisoned lock is usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more local socket in `key`; subscribes the bus on the first.
    pub fn add(&self, key: &RoomKey) {
        let mut counts = self.lock();
        let n = counts.entry(key.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.bus.subscribe(key);
            ::metrics::gauge!(metrics::ROOMS).set(counts.len() as f64);
        }
    }

    /// One local socket fewer in `key`; unsubscribes the bus after the last.
    pub fn remove(&self, key: &RoomKey) {
        let mut counts = self.lock();
        if let Some(n) = counts.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(key);
                self.bus.unsubscribe(key);
                ::metrics::gauge!(metrics::ROOMS).set(counts.len() as f64);
            }
        }
    }
}
