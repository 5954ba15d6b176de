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
    /// The room's epoch the offset belongs to.
    pub epoch: Arc<str>,
    /// The event, shared between the rooms it was published to.
    pub event: Arc<Event>,
}

/// Where a room's history stands: its epoch (changes whenever the history was lost) and the
/// offset of its last event (0 before the first).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// Identity of the room's current history.
    pub epoch: Arc<str>,
    /// Offset of the room's last event.
    pub offset: u64,
}

/// Why a room's missed events cannot be replayed (a metric label and a client-visible reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The history was lost and restarted since the client's position.
    EpochChanged,
    /// The client claims an offset the room has not reached.
    Future,
    /// Some missed events have already left the history (cap or TTL).
    TooOld,
    /// More events were missed than one replay may send.
    TooMany,
}

impl Lost {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::EpochChanged => "epoch_changed",
            Lost::Future => "future_offset",
            Lost::TooOld => "too_old",
            Lost::TooMany => "too_many",
        }
    }
}

/// The answer to "what happened in this room after my position?".
#[derive(Debug, Clone)]
pub enum Recovery {
    /// Every event after the position, in order (possibly none), and where the room is now.
    Replay {
        /// `(offset, event)` in offset order, contiguous from the position's offset + 1.
        events: Vec<(u64, Arc<Event>)>,
        /// The room's position at the time of the read.
        now: Position,
    },
    /// The missed events cannot be replayed; the client must refetch its state.
    Lost {
        /// Why.
        reason: Lost,
        /// The room's position at the time of the read.
        now: Position,
    },
}

/// What the bus hands to the gateway's relay.
#[derive(Debug, Clone)]
pub enum BusMessage {
    /// An event for a room.
    Event(Delivery),
    /// A room's history was lost while this gateway was cut off: tell its sockets to refetch.
    Resync {
        /// The room.
        key: RoomKey,
        /// Its position now.
        now: Position,
    },
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
    /// The event's tenant is over its publish rate (fleet-wide); nothing was published.
    #[error("the tenant is over its publish rate; retry in {} ms", .0.as_millis())]
    TenantRateLimited(Duration),
}

/// Where the bus sends what it receives. Bounded: a gateway that falls behind slows its bus
/// reader rather than growing memory.
pub type DeliverySender = tokio::sync::mpsc::Sender<BusMessage>;

/// The distributed (or embedded) event bus.
pub trait Bus: Send + Sync + 'static {
    /// Publishes `event` once to each of `rooms` (all of `event`'s tenant) and returns each
    /// room's new offset, in the same order.
    fn publish(
        &self,
        event: Arc<Event>,
        rooms: Vec<RoomKey>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>>;

    /// This gateway now has sockets in `room`: receive its events (the embedded bus delivers
    /// every room's).
    fn subscribe(&self, _room: &RoomKey) {}

    /// This gateway has no socket left in `room`.
    fn unsubscribe(&self, _room: &RoomKey) {}

    /// Waits until deliveries of `room` flow to this gateway (its subscription is confirmed), up
    /// to `timeout`; false if they do not by then.
    fn wait_subscribed<'a>(
        &'a self,
        _room: &'a RoomKey,
        _timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        futures_util::future::ready(true).boxed()
    }

    /// The room's current position; creates its epoch if the room has no history yet.
    fn position<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<Position, BusError>>;

    /// The room's events after `since`, at most `max` of them, or why they cannot be replayed.
    fn recover<'a>(
        &'a self,
        room: &'a RoomKey,
        since: &'a Position,
        max: u64,
    ) -> BoxFuture<'a, Result<Recovery, BusError>>;

    /// Whether the bus can publish and deliver now.
    fn is_ready(&self) -> bool;
}
