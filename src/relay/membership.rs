//! Which rooms this gateway serves, and how many of its sockets are in each (entering or
//! entered): the bus is subscribed to a room from its first socket to its last. Kept beside
//! the relay's members, behind the same handle, so one owner decides both delivery and
//! subscription; counted at once (not in the relay task) so a join's subscription starts
//! before the join waits for anything. Every entry and exit also goes to presence and the
//! lifecycle stream from here, the one place that sees them all.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::bus::Bus;
use crate::events::RoomKey;
use crate::lifecycle::{Lifecycle, Socket};
use crate::metrics;
use crate::presence::Presence;

/// Member counts per room served by this gateway.
pub struct Membership {
    /// A std mutex: held for a map lookup only, never across an await.
    counts: Mutex<HashMap<RoomKey, usize>>,
    bus: Arc<dyn Bus>,
    presence: Arc<Presence>,
    lifecycle: Arc<Lifecycle>,
}

/// Why a socket leaves a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It asked to (or lost the right to): a `leave` entry in the lifecycle stream.
    Left,
    /// It disconnected: its `disconnect` entry stands for every room.
    Disconnected,
}

impl Membership {
    /// Empty membership that subscribes and unsubscribes through `bus` and reports entries and
    /// exits to `presence` and `lifecycle`.
    pub fn new(bus: Arc<dyn Bus>, presence: Arc<Presence>, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            bus,
            presence,
            lifecycle,
        }
    }

    /// Socket `who` enters `key`; subscribes the bus on the first local socket.
    pub fn add(&self, key: &RoomKey, who: Socket<'_>) {
        {
            let mut counts = self.counts.lock();
            let n = counts.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.bus.subscribe(key);
                ::metrics::gauge!(metrics::ROOMS).set(counts.len() as f64);
            }
        }
        self.presence.entered(key, who.identity);
        self.lifecycle.joined(who, key);
    }

    /// Socket `who` leaves `key` (it entered it before); unsubscribes the bus after the last
    /// local socket.
    pub fn remove(&self, key: &RoomKey, who: Socket<'_>, why: Exit) {
        {
            let mut counts = self.counts.lock();
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                    self.bus.unsubscribe(key);
                    ::metrics::gauge!(metrics::ROOMS).set(counts.len() as f64);
                }
            }
        }
        self.presence.left(key, who.identity);
        if why == Exit::Left {
            self.lifecycle.left(who, key);
        }
    }
}
