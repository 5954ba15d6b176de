//! The bus: how events get from publishers to every gateway.
//!
//! [`Bus`] is what the rest of the gateway sees. A publish assigns each room its next offset and
//! returns the offsets; every gateway whose bus is subscribed to a room gets a [`Delivery`] for
//! each event of that room, in offset order, on the channel given to the bus at construction.
//!
//! Implementations: [`memory::MemoryBus`] (embedded, one node) and [`redis::RedisBus`].

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::events::{Event, RoomKey};

/// One event for one room, as a gateway receives it from the bus.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Tenant and room.
    pub key: RoomKey,
    /// Position of the event in the room (1, 2, 3, ...).
    pub offset: u64,
    /// The event, shared between the rooms it was published to.
    pub event: Arc<Event>,
}

/// Why the bus could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus is not reachable now; the caller should retry later (HTTP 503).
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
    /// The bus refused the event (a bug or a foreign publisher's bad input), HTTP 500.
    #[error("the event bus refused the event: {0}")]
    Rejected(String),
    /// The bus cannot be used with this configuration (bad URL, server too old).
    #[error("{0}")]
    Config(String),
}

/// Where the bus sends what it receives. Bounded: a gateway that falls behind slows its bus
/// reader rather than growing memory.
pub type DeliverySender = tokio::sync::mpsc::Sender<Delivery>;

/// The distributed (or embedded) event bus.
pub trait Bus: Send + Sync + 'static {
    /// Publishes `event` once to each of `rooms` (all of `event`'s tenant) and returns each
    /// room's new offset, in the same order.
    fn publish(
        &self,
        event: Arc<Event>,
        rooms: Vec<RoomKey>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>>;

    /// This gateway now has sockets in `room`: receive its events.
    fn subscribe(&self, room: &RoomKey);

    /// This gateway has no socket left in `room`.
    fn unsubscribe(&self, room: &RoomKey);

    /// Waits until deliveries of `room` flow to this gateway (its subscription is confirmed), up
    /// to `timeout`; false if they do not by then.
    fn wait_subscribed<'a>(
        &'a self,
        _room: &'a RoomKey,
        _timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        futures_util::future::ready(true).boxed()
    }

    /// Whether the bus can publish and deliver now.
    fn is_ready(&self) -> bool;
}
