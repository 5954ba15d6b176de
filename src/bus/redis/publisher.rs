//! Publishing through the `rtg_publish` function, and loading that function.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use parking_lot::Mutex;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use super::pool::{PooledConnection, RedisPool, SharedConnection};
use super::{topology, RedisSettings, FUNCTION_LIBRARY, FUNCTION_VERSION, SHARD_MODE};
use crate::bus::{BusError, Lost, Position, Recovery};
use crate::events::{Event, RoomKey, ValidPublish};
use crate::metrics;

/// Publishes events into Redis, one atomic `rtg_publish` call per room. Usable on its own by a
/// Rust backend: build it from [`RedisSettings`] and call [`Publisher::publish_valid`].
#[derive(Clone)]
pub struct Publisher {
    pool: RedisPool,
    settings: Arc<RedisSettings>,
    /// The socket every history read pipelines on. Reads come in bursts (every client of a
    /// dead gateway comes back at once): taking a pooled connection for each would queue them
    /// behind the pool's health checks. Dropped after an error; the next read takes a new one.
    reads: Arc<Mutex<Option<SharedConnection>>>,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl Publisher {
    /// A publisher with a bounded pool; connects lazily.
    pub fn new(settings: Arc<RedisSettings>) -> Result<Self, BusError> {
        let pool = RedisPool::new(&settings)?;
        Ok(Self {
            pool,
            settings,
            reads: Arc::default(),
        })
    }

    /// The settings this publisher uses.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// A pooled connection, timing the wait.
    pub async fn connection(&self) -> Result<PooledConnection, BusError> {
        let start = Instant::now();
        let conn = self.pool.get().await.map_err(unavailable);
        ::metrics::histogram!(metrics::REDIS_POOL_WAIT).record(start.elapsed().as_secs_f64());
        conn
    }

    /// Checks the server is Redis 7 or newer and that our function library is loaded; in
    /// cluster mode, on every primary.
    pub async fn check_server(&self) -> Result<(), BusError> {
        if self.settings.is_cluster() {
            return self.ensure_function_everywhere().await;
        }
        let mut conn = self.connection().await?;
        self.check_node(&mut conn).await
    }

    /// Loads the function library on every primary of the cluster that lacks it (each node
    /// keeps its own functions, and a primary added later starts without them).
    pub async fn ensure_function_everywhere(&self) -> Result<(), BusError> {
        for address in self.primaries().await? {
            self.ensure_function_on(&address).await?;
        }
        Ok(())
    }

    /// The cluster's primaries (`host:port`), from its slot map.
    async fn primaries(&self) -> Result<std::collections::BTreeSet<String>, BusError> {
        let seeds: Vec<String> = self
            .settings
            .cluster_nodes
            .iter()
            .filter_map(|u| topology::address_of(u))
            .collect();
        let map = topology::fetch(&self.settings.url, &seeds, self.settings.timeout)
            .await
            .map_err(unavailable)?;
        Ok(map.primaries())
    }

    /// A client of each node that holds keys: the one server, or every primary of a cluster
    /// (for what must see every key, such as a `SCAN`).
    pub async fn node_clients(&self) -> Result<Vec<redis::Client>, BusError> {
        if !self.settings.is_cluster() {
            let client = redis::Client::open(self.settings.url.as_str())
                .map_err(|e| BusError::Config(e.to_string()))?;
            return Ok(vec![client]);
        }
        self.primaries()
            .await?
            .iter()
            .map(|a| topology::node_client(&self.settings.url, a, false).map_err(BusError::Config))
            .collect()
    }

    /// Checks the version of the node at `host:port` and loads the function library there
    /// unless it has this version or a newer one.
    pub async fn ensure_function_on(&self, address: &str) -> Result<(), BusError> {
        let client =
            topology::node_client(&self.settings.url, address, false).map_err(BusError::Config)?;
        let mut conn = tokio::time::timeout(
            self.settings.timeout,
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| unavailable(format!("{address}: connect timed out")))?
        .map_err(|e| unavailable(format!("{address}: {e}")))?;
        self.check_node(&mut conn).await
    }

    /// Checks one server's version and function library.
    async fn check_node(&self, conn: &mut impl ConnectionLike) -> Result<(), BusError> {
        let info: String = tokio::time::timeout(
            self.settings.timeout,
            redis::cmd("INFO").arg("server").query_async(conn),
        )
        .await
        .map_err(|_| unavailable("INFO timed out"))?
        .map_err(unavailable)?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("0")
            .trim()
            .to_string();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 7 {
            return Err(BusError::Config(format!(
                "Redis {version} is too old: the gateway needs Redis 7 or newer (functions)"
            )));
        }
        self.ensure_function(conn).await
    }

    /// After "Function not found": load the library where it is missing (on one server, or on
    /// every primary of the cluster, since the slot may now live on a new one).
    async fn reload(&self, conn: &mut impl ConnectionLike) -> Result<(), BusError> {
        if self.settings.is_cluster() {
            self.ensure_function_everywhere().await
        } else {
            self.ensure_function(conn).await
        }
    }

    /// Loads the function library unless the server already has this version or a newer one.
    async fn ensure_function(&self, conn: &mut impl ConnectionLike) -> Result<(), BusError> {
        ensure_library(conn, "rtg_version", FUNCTION_VERSION, FUNCTION_LIBRARY).await
    }

    /// Publishes `event` to each of `rooms` (one `rtg_publish` per room, pipelined) and returns
    /// each room's `(offset, epoch)`.
    pub async fn publish(
        &self,
        event: &Event,
        rooms: &[RoomKey],
    ) -> Result<Vec<(u64, String)>, BusError> {
        let start = Instant::now();
        let body = serde_json::to_string(event).map_err(|e| BusError::Rejected(e.to_string()))?;
        let mut conn = self.connection().await?;
        let result = match self.call(&mut conn, &body, rooms).await {
            Err(BusError::Rejected(m)) if m.contains("Function not found") => {
                // Redis lost its functions (restarted without persistence), or the room's slot
                // moved to a primary that never had them: load and retry once.
                self.reload(&mut conn).await?;
                self.call(&mut conn, &body, rooms).await
            }
            other => other,
        };
        ::metrics::histogram!(metrics::REDIS_PUBLISH_DURATION)
            .record(start.elapsed().as_secs_f64());
        result
    }

    /// One `rtg_publish` command for `room`.
    /// `left`: rooms of this event still to go (this one included); the tenant's publish rate
    /// admits an event whole or not at all.
    fn publish_cmd(&self, body: &str, room: &RoomKey, left: usize) -> redis::Cmd {
        let names = self.settings.names(room);
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtg_publish")
            .arg(2)
            .arg(&names.stream)
            .arg(&names.meta)
            .arg(&names.channel)
            .arg(body)
            .arg(self.settings.history_max_len)
            .arg(self.settings.history_ttl.as_secs().max(1));
        if self.settings.is_cluster() {
            cmd.arg(SHARD_MODE);
        } else {
            cmd.arg(left);
        }
        cmd
    }

    async fn call(
        &self,
        conn: &mut PooledConnection,
        body: &str,
        rooms: &[RoomKey],
    ) -> Result<Vec<(u64, String)>, BusError> {
        let reply: Result<Vec<(u64, String)>, redis::RedisError> = match conn.cluster_handle() {
            // One pipeline to one server.
            None => {
                let mut pipe = redis::pipe();
                for (i, room) in rooms.iter().enumerate() {
                    pipe.add_command(self.publish_cmd(body, room, rooms.len() - i));
                }
                tokio::time::timeout(self.settings.timeout, pipe.query_async(conn)).await
            }
            // Rooms live in different slots, so a pipeline would be refused (CROSSSLOT): one
            // command per room, concurrently, each routed to its slot's primary.
            Some(handle) => {
                let calls = rooms.iter().enumerate().map(|(i, room)| {
                    let mut handle = handle.clone();
                    let cmd = self.publish_cmd(body, room, rooms.len() - i);
                    async move { cmd.query_async::<(u64, String)>(&mut handle).await }
                });
                tokio::time::timeout(self.settings.timeout, join_all(calls))
                    .await
                    .map(|all| all.into_iter().collect())
            }
        }
        .map_err(|_| unavailable("Redis did not answer in time"))?;
        reply.map_err(|e| {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_cluster_error()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
            {
                unavailable(e)
            } else if let Some(wait) = rate_limited(&e.to_string()) {
                BusError::TenantRateLimited(wait)
            } else {
                BusError::Rejected(e.to_string())
            }
        })
    }

    /// Publishes a validated request (see [`crate::events::PublishRules::validate`]).
    pub async fn publish_valid(&self, p: &ValidPublish) -> Result<Vec<(u64, String)>, BusError> {
        let rooms: Vec<RoomKey> = p
            .rooms
            .iter()
            .map(|r| RoomKey::new(p.tenant.clone(), r.clone()))
            .collect();
        self.publish(&p.event, &rooms).await
    }

    /// Runs `rtg_read`; `after < 0` asks for the position only.
    async fn read(
        &self,
        room: &RoomKey,
        epoch: &str,
        after: i64,
        max: u64,
    ) -> Result<Vec<redis::Value>, BusError> {
        let names = self.settings.names(room);
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtg_read")
            .arg(2)
            .arg(&names.stream)
            .arg(&names.meta)
            .arg(epoch)
            .arg(after)
            .arg(max)
            .arg(self.settings.history_ttl.as_secs().max(1));
        if self.settings.is_cluster() {
            cmd.arg(SHARD_MODE);
        }
        let mut conn = self.read_handle().await?;
        for attempt in 0..2 {
            let reply = tokio::time::timeout(
                self.settings.timeout,
                cmd.query_async::<Vec<redis::Value>>(&mut conn),
            )
            .await
            .map_err(|_| unavailable("Redis did not answer in time"));
            match reply {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if attempt == 0 && e.to_string().contains("Function not found") => {
                    self.reload(&mut conn).await?;
                }
                Ok(Err(e)) => {
                    self.drop_read_handle();
                    return Err(unavailable(e));
                }
                Err(e) => {
                    self.drop_read_handle();
                    return Err(e);
                }
            }
        }
        Err(unavailable("rtg_read is not loaded"))
    }

    /// The shared socket of history reads, taken from the pool when there is none.
    async fn read_handle(&self) -> Result<SharedConnection, BusError> {
        if let Some(c) = self.reads.lock().clone() {
            return Ok(c);
        }
        let fresh = self.connection().await?.shared();
        let mut held = self.reads.lock();
        Ok(held.get_or_insert(fresh).clone())
    }

    fn drop_read_handle(&self) {
        *self.reads.lock() = None;
    }

    /// The room's position (creating its epoch when it has no history).
    pub async fn position(&self, room: &RoomKey) -> Result<Position, BusError> {
        let reply = self.read(room, "", -1, 0).await?;
        parse_position(&reply)
    }

    /// The room's events after `since` (at most `max`), or why they cannot be replayed.
    pub async fn recover(
        &self,
        room: &RoomKey,
        since: &Position,
        max: u64,
    ) -> Result<Recovery, BusError> {
        let after = i64::try_from(since.offset).unwrap_or(i64::MAX);
        let reply = self.read(room, &since.epoch, after, max).await?;
        let now = parse_position(&reply)?;
        let status: String = reply
            .get(2)
            .map(redis::from_redis_value_ref)
            .transpose()
            .map_err(|e| BusError::Rejected(format!("rtg_read reply: {e}")))?
            .unwrap_or_default();
        let reason = match status.as_str() {
            "ok" => None,
            "epoch_changed" => Some(Lost::EpochChanged),
            "future_offset" => Some(Lost::Future),
            "too_many" => Some(Lost::TooMany),
            _ => Some(Lost::TooOld),
        };
        if let Some(reason) = reason {
            return Ok(Recovery::Lost { reason, now });
        }
        let mut events = Vec::with_capacity(reply.len().saturating_sub(3));
        for (i, v) in reply.iter().skip(3).enumerate() {
            let body: String =
                redis::from_redis_value_ref(v).map_err(|e| BusError::Rejected(e.to_string()))?;
            match serde_json::from_str::<Event>(&body) {
                Ok(event) => events.push((since.offset + 1 + i as u64, Arc::new(event))),
                Err(e) => {
                    tracing::warn!(%room, offset = since.offset + 1 + i as u64, error = %e, "unreadable history entry; cannot replay");
                    return Ok(Recovery::Lost {
                        reason: Lost::TooOld,
                        now,
                    });
                }
            }
        }
        Ok(Recovery::Replay { events, now })
    }

    /// A plain `GET`-style helper for tests and tools: how many entries a room's history holds.
    pub async fn history_len(&self, room: &RoomKey) -> Result<u64, BusError> {
        let mut conn = self.connection().await?;
        conn.xlen(self.settings.names(room).stream)
            .await
            .map_err(unavailable)
    }
}

/// The wait in an `rtg_publish` refusal for the tenant's publish rate, if it is one.
fn rate_limited(message: &str) -> Option<std::time::Duration> {
    let rest = message
        .split("tenant_rate_limited retry_after_ms=")
        .nth(1)?;
    let ms: u64 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(std::time::Duration::from_millis(ms))
}

fn parse_position(reply: &[redis::Value]) -> Result<Position, BusError> {
    let bad = |e: String| BusError::Rejected(format!("unexpected rtg_read reply: {e}"));
    let epoch: String = reply
        .first()
        .ok_or_else(|| bad("empty".into()))
        .and_then(|v| redis::from_redis_value_ref(v).map_err(|e| bad(e.to_string())))?;
    let offset: u64 = reply
        .get(1)
        .ok_or_else(|| bad("no offset".into()))
        .and_then(|v| redis::from_redis_value_ref(v).map_err(|e| bad(e.to_string())))?;
    Ok(Position {
        epoch: Arc::from(epoch),
        offset,
    })
}

/// Loads a function library (`source`) unless the server already has `version` of it or a
/// newer one, as its `version_fn` (a `no-writes` function taking no keys) reports.
pub async fn ensure_library(
    conn: &mut impl ConnectionLike,
    version_fn: &str,
    version: i64,
    source: &str,
) -> Result<(), BusError> {
    let loaded: Result<i64, _> = redis::cmd("FCALL_RO")
        .arg(version_fn)
        .arg(0)
        .query_async(conn)
        .await;
    match loaded {
        Ok(v) if v >= version => {
            if v > version {
                tracing::info!(
                    library = version_fn,
                    loaded = v,
                    ours = version,
                    "Redis has a newer function library; keeping it"
                );
            }
            Ok(())
        }
        _ => {
            let _: String = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(source)
                .query_async(conn)
                .await
                .map_err(|e| {
                    BusError::Config(format!("cannot load the Redis function library: {e}"))
                })?;
            tracing::info!(
                library = version_fn,
                version,
                "loaded a Redis function library"
            );
            Ok(())
        }
    }
}
