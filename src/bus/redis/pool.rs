//! The publish / history connection pool: deadpool's single-server pool, or its cluster pool
//! whose connections route each command to the owner of its keys' slot.

use deadpool_redis::{PoolConfig as DeadpoolSettings, Runtime, Timeouts};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::RedisSettings;
use crate::bus::BusError;

/// A bounded pool of connections to one server or to a cluster.
#[derive(Clone)]
pub enum RedisPool {
    /// One Redis server.
    Single(deadpool_redis::Pool),
    /// A Redis Cluster.
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pooled connection of either kind.
pub enum PooledConnection {
    /// To one Redis server.
    Single(deadpool_redis::Connection),
    /// To a Redis Cluster (commands are routed by slot, redirects followed).
    Cluster(deadpool_redis::cluster::Connection),
}

impl RedisPool {
    /// A pool for `settings`; connects lazily.
    pub fn new(settings: &RedisSettings) -> Result<Self, BusError> {
        let limits = DeadpoolSettings {
            max_size: settings.pool_size,
            timeouts: Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.timeout),
                recycle: Some(settings.timeout),
            },
            ..DeadpoolSettings::default()
        };
        if settings.is_cluster() {
            let cfg = deadpool_redis::cluster::Config {
                urls: Some(settings.cluster_nodes.clone()),
                connections: None,
                pool: Some(limits),
                read_from_replicas: false,
            };
            let pool = cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
                BusError::Config(format!(
                    "invalid --redis-cluster-nodes / REDIS_CLUSTER_NODES: {e}"
                ))
            })?;
            Ok(Self::Cluster(pool))
        } else {
            let mut cfg = deadpool_redis::Config::from_url(settings.url.clone());
            cfg.pool = Some(limits);
            let pool = cfg
                .create_pool(Some(Runtime::Tokio1))
                .map_err(|e| BusError::Config(format!("invalid REDIS_URL: {e}")))?;
            Ok(Self::Single(pool))
        }
    }

    /// A connection from the pool.
    pub async fn get(&self) -> Result<PooledConnection, String> {
        let conn = match self {
            Self::Single(p) => p.get().await.map(PooledConnection::Single),
            Self::Cluster(p) => p.get().await.map(PooledConnection::Cluster),
        };
        conn.map_err(|e| e.to_string())
    }
}

/// A handle on a pooled connection's socket that does not hold the connection: commands from
/// many holders are pipelined on it (both kinds multiplex).
#[derive(Clone)]
pub enum SharedConnection {
    /// To one Redis server.
    Single(redis::aio::MultiplexedConnection),
    /// To a Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl PooledConnection {
    /// A handle that can run one command concurrently with others on the same connection
    /// (cluster connections multiplex; a single-server one is used as is).
    pub fn cluster_handle(&self) -> Option<redis::cluster_async::ClusterConnection> {
        match self {
            Self::Single(_) => None,
            Self::Cluster(c) => Some((**c).clone()),
        }
    }

    /// A handle on this connection's socket; the pooled connection can go back to the pool.
    pub fn shared(&self) -> SharedConnection {
        match self {
            Self::Single(c) => SharedConnection::Single((**c).clone()),
            Self::Cluster(c) => SharedConnection::Cluster((**c).clone()),
        }
    }
}

/// `ConnectionLike` for an enum of a single-server and a cluster connection, by delegation.
macro_rules! delegate_connection_like {
    ($enum:ty) => {
        impl ConnectionLike for $enum {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    Self::Single(c) => c.req_packed_command(cmd),
                    Self::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                cmd: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    Self::Single(c) => c.req_packed_commands(cmd, offset, count),
                    Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    Self::Single(c) => c.get_db(),
                    Self::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}

delegate_connection_like!(SharedConnection);
delegate_connection_like!(PooledConnection);
