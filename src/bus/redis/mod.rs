//! The Redis bus: per-room channels, one atomic function call per room that appends to the
//! room's history and publishes, and a subscriber that heals itself.
//!
//! Layout of one room (tenant `1`, room `batch:456`, prefix `rtg`), all in one cluster slot:
//!
//! | what | name |
//! |---|---|
//! | pub/sub channel | `rtg:{1/batch:456}` |
//! | history stream (entry id `<offset>-1`, field `e` = envelope) | `rtg:{1/batch:456}:h` |
//! | metadata hash (`offset`, `epoch`; `rid` in cluster mode) | `rtg:{1/batch:456}:m` |
//!
//! Files: `function.lua` (the library), `publisher.rs` (publishing, history reads, loading the
//! library per node), `pool.rs` (one server or a cluster), `reads.rs` (coalesced history reads),
//! `topology.rs` (slots and the slot map), `subscriber.rs` (pub/sub on one server) and
//! `subscriber/sharded.rs` (sharded pub/sub on a Redis Cluster).

mod pool;
mod publisher;
mod reads;
mod subscriber;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

pub use publisher::{ensure_library, Publisher};
use subscriber::Subscriber;

use super::{Bus, BusError, DeliverySender, Position, Recovery};
use crate::events::{Event, RoomKey};

/// Source of the Redis function library (`FUNCTION LOAD`).
pub const FUNCTION_LIBRARY: &str = include_str!("function.lua");
/// Version of [`FUNCTION_LIBRARY`]; `FCALL_RO rtg_version 0` returns the loaded one.
pub const FUNCTION_VERSION: i64 = 4;
/// The optional last argument of `rtg_publish` and `rtg_read` that selects sharded pub/sub
/// (`SPUBLISH`) and the failover fence; every publisher to a Redis Cluster passes it.
pub const SHARD_MODE: &str = "shard";

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` (in cluster mode, the first seed node).
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each); empty for one Redis server.
    /// In cluster mode each room's commands go to the primary that owns its slot and events
    /// travel by sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`).
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Most events kept in a room's history.
    pub history_max_len: u64,
    /// How long a room's history lives after its last event.
    pub history_ttl: Duration,
    /// Connections in the publish / history pool.
    pub pool_size: usize,
    /// Deadline of one Redis operation (connect, pool wait, command).
    pub timeout: Duration,
    /// How long a room stays subscribed after its last local member left.
    pub unsubscribe_delay: Duration,
}

/// Key and channel names of one room.
#[derive(Debug, Clone)]
pub struct RoomNames {
    /// Pub/sub channel.
    pub channel: String,
    /// History stream.
    pub stream: String,
    /// Metadata hash.
    pub meta: String,
}

impl RedisSettings {
    /// Whether the bus talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// Names of `room`'s channel and keys.
    pub fn names(&self, room: &RoomKey) -> RoomNames {
        let channel = format!("{}:{{{}}}", self.prefix, room.as_str());
        RoomNames {
            stream: format!("{channel}:h"),
            meta: format!("{channel}:m"),
            channel,
        }
    }

    /// The room a channel name belongs to, if it is one of ours.
    pub fn room_of_channel(&self, channel: &str, max_room_len: usize) -> Option<RoomKey> {
        let inner = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')?;
        RoomKey::parse(inner, max_room_len).ok()
    }
}

/// The Redis implementation of [`Bus`].
pub struct RedisBus {
    publisher: Publisher,
    subscriber: Arc<Subscriber>,
    reads: reads::Coalescer,
}

impl RedisBus {
    /// Connects the publish pool and starts the subscriber task (which retries until Redis is
    /// reachable). Fails only on a bad URL or a Redis server older than 7.
    pub async fn start(
        settings: RedisSettings,
        deliveries: DeliverySender,
        max_room_len: usize,
        strict_catalog: bool,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        crate::metrics::register_redis();
        let settings = Arc::new(settings);
        let publisher = Publisher::new(settings.clone())?;
        match publisher.check_server().await {
            Ok(()) => {}
            Err(BusError::Unavailable(e)) => {
                tracing::warn!(error = %e, "Redis is not reachable yet; the gateway stays not ready until it is");
            }
            Err(e) => return Err(e),
        }
        let subscriber = Subscriber::start(
            settings,
            publisher.clone(),
            deliveries,
            max_room_len,
            strict_catalog,
            shutdown,
        )?;
        Ok(Self {
            publisher,
            subscriber,
            reads: reads::Coalescer::default(),
        })
    }
}

impl Bus for RedisBus {
    fn publish(
        &self,
        event: Arc<Event>,
        rooms: Vec<RoomKey>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        async move {
            let placed = self.publisher.publish(&event, &rooms).await?;
            Ok(placed.into_iter().map(|(offset, _epoch)| offset).collect())
        }
        .boxed()
    }

    fn subscribe(&self, room: &RoomKey) {
        self.subscriber.want(room);
    }

    fn unsubscribe(&self, room: &RoomKey) {
        self.subscriber.release(room);
    }

    fn wait_subscribed<'a>(&'a self, room: &'a RoomKey, timeout: Duration) -> BoxFuture<'a, bool> {
        self.subscriber.wait_subscribed(room, timeout).boxed()
    }

    fn position<'a>(&'a self, room: &'a RoomKey) -> BoxFuture<'a, Result<Position, BusError>> {
        self.publisher.position(room).boxed()
    }

    fn recover<'a>(
        &'a self,
        room: &'a RoomKey,
        since: &'a Position,
        max: u64,
    ) -> BoxFuture<'a, Result<Recovery, BusError>> {
        let (publisher, owned_room, owned_since) =
            (self.publisher.clone(), room.clone(), since.clone());
        let read = async move { publisher.recover(&owned_room, &owned_since, max).await };
        self.reads.recover(room, since, max, read).boxed()
    }

    fn is_ready(&self) -> bool {
        self.subscriber.is_up()
    }
}
