//! What the gateways of one fleet share through Redis for tenancy and control: leases of live
//! gateways, connections per tenant, publish rates, revocations, and the control channel.
//!
//! | what | key |
//! |---|---|
//! | live gateways (field: gateway id, value: lease end in ms) | `<prefix>:quota:gateways` (apart from presence's leases) |
//! | connections of a tenant (field: gateway id, value: count; field `lease:<gateway id>`: end of that gateway's lease in ms) | `<prefix>:quota:conns:{<tenant>}` |
//! | publish rates (`rate:<tenant>`, `rate:*`) | `<prefix>:quota:limits` |
//! | a tenant's publish bucket (`tokens`, `ts`) | `<prefix>:quota:rate:{<tenant>}` |
//! | a revocation (value: seconds; expires) | `<prefix>:revoked:<tenant>:<user>` |
//! | control channel (pub/sub) | `<prefix>:control` |
//! | answers to one control request (list; expires) | `<prefix>:control:reply:<id>` |
//!
//! Every command names keys of one tenant only (its hash tag `{<tenant>}`), so the same calls
//! work on one Redis and on a Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;

use super::quotas::Quotas;
use crate::bus::redis::{Publisher, RedisSettings};
use crate::bus::BusError;
use crate::events::{TenantId, UserId};

/// How long a gateway's lease lasts without renewal: past it its connections stop counting.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a gateway renews its lease and re-asserts its connection counts.
pub const BEAT: Duration = Duration::from_secs(1);

/// The Redis side of tenancy and control for one gateway.
#[derive(Clone)]
pub struct Fleet {
    redis: Publisher,
    prefix: Arc<str>,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl Fleet {
    /// A fleet handle with its own small pool on the bus's Redis.
    pub fn new(settings: &RedisSettings) -> Result<Self, BusError> {
        let mut own = settings.clone();
        own.pool_size = own.pool_size.clamp(2, 8);
        Ok(Self {
            prefix: Arc::from(settings.prefix.as_str()),
            redis: Publisher::new(Arc::new(own))?,
        })
    }

    /// The Redis URL (for the control channel's subscriber connection).
    pub fn url(&self) -> &str {
        &self.redis.settings().url
    }

    /// The control channel.
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    fn reply_key(&self, id: &str) -> String {
        format!("{}:control:reply:{id}", self.prefix)
    }

    fn conns_key(&self, tenant: &TenantId) -> String {
        format!("{}:quota:conns:{{{tenant}}}", self.prefix)
    }

    fn revoked_key(&self, tenant: &TenantId, user: &UserId) -> String {
        format!("{}:revoked:{tenant}:{user}", self.prefix)
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BusError> {
        tokio::time::timeout(self.redis.settings().timeout, f)
            .await
            .map_err(|_| unavailable("Redis did not answer in time"))?
            .map_err(unavailable)
    }

    /// Counts one more connection of `tenant` on gateway `me` unless the fleet holds `limit`.
    pub async fn admit(&self, me: &str, tenant: &TenantId, limit: u64) -> Result<bool, BusError> {
        let mut conn = self.redis.connection().await?;
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtg_conn_admit")
            .arg(1)
            .arg(self.conns_key(tenant))
            .arg(me)
            .arg(limit)
            .arg(LEASE.as_millis() as u64);
        let admitted: i64 = self.timed(cmd.query_async(&mut conn)).await?;
        Ok(admitted == 1)
    }

    /// Renews gateway `me`'s lease in the fleet and on each tenant it counts connections of,
    /// and keeps those keys alive. Counts are only ever changed by admissions and releases
    /// (never overwritten, which could race with an admission); a count missing from Redis is
    /// set from `counts`.
    pub async fn beat(&self, me: &str, counts: &[(TenantId, u64)]) -> Result<(), BusError> {
        let lease_end = crate::events::envelope::now_millis() as u64 + LEASE.as_millis() as u64;
        let mut conn = self.redis.connection().await?;
        self.timed(conn.hset::<_, _, _, ()>(self.gateways_key(), me, lease_end))
            .await?;
        let lease = format!("lease:{me}");
        self.per_tenant(counts, |pipe, key, n| {
            pipe.hset_nx(key, me, n.1)
                .ignore()
                .hset(key, &lease, lease_end)
                .ignore()
                .pexpire(key, (LEASE * 4).as_millis() as i64)
                .ignore();
        })
        .await
    }

    fn gateways_key(&self) -> String {
        format!("{}:quota:gateways", self.prefix)
    }

    /// How many gateways hold a live lease (a Redis Cluster cannot count a channel's
    /// subscribers: `PUBLISH` answers for one node only).
    async fn live_gateways(&self) -> Result<usize, BusError> {
        let now = crate::events::envelope::now_millis() as u64;
        let mut conn = self.redis.connection().await?;
        let leases: Vec<u64> = self.timed(conn.hvals(self.gateways_key())).await?;
        Ok(leases.into_iter().filter(|end| *end >= now).count())
    }

    /// Runs `add`'s commands on each tenant's connection key, one pipeline per tenant (a tenant's
    /// keys share one cluster slot; different tenants' may not), all at once.
    async fn per_tenant<T>(
        &self,
        tenants: &[T],
        add: impl Fn(&mut redis::Pipeline, &str, &T),
    ) -> Result<(), BusError>
    where
        T: TenantOf,
    {
        let conn = self.redis.connection().await?.shared();
        let calls = tenants.iter().map(|t| {
            let mut pipe = redis::pipe();
            add(&mut pipe, &self.conns_key(t.tenant()), t);
            let mut conn = conn.clone();
            async move { self.timed(pipe.query_async::<()>(&mut conn)).await }
        });
        futures_util::future::try_join_all(calls).await.map(|_| ())
    }

    /// Gives back one connection slot of `tenant` on gateway `me`.
    pub async fn release(&self, me: &str, tenant: &TenantId) -> Result<(), BusError> {
        let mut conn = self.redis.connection().await?;
        self.timed(conn.hincr::<_, _, _, i64>(self.conns_key(tenant), me, -1))
            .await
            .map(|_| ())
    }

    /// Gateway `me` is stopping: its connections stop counting at once.
    pub async fn leave(&self, me: &str, tenants: &[TenantId]) -> Result<(), BusError> {
        let mut conn = self.redis.connection().await?;
        self.timed(conn.hdel::<_, _, ()>(self.gateways_key(), me))
            .await?;
        let lease = format!("lease:{me}");
        self.per_tenant(tenants, |pipe, key, _| {
            pipe.hdel(key, &[me, lease.as_str()]).ignore();
        })
        .await
    }

    /// Takes `events` (an event times its rooms) from `tenant`'s publish bucket of `rate` per
    /// second (`rtg_rate_take`); `Some(wait)` when over it. On one Redis `rtg_publish` takes
    /// them itself; on a Redis Cluster its keys cannot reach the bucket, so this runs first.
    pub async fn take_rate(
        &self,
        tenant: &TenantId,
        rate: u64,
        events: usize,
    ) -> Result<Option<Duration>, BusError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtg_rate_take")
            .arg(1)
            .arg(format!("{}:quota:rate:{{{tenant}}}", self.prefix))
            .arg(rate.max(1))
            .arg(events.max(1));
        let mut conn = self.redis.connection().await?;
        let wait_ms: u64 = self.timed(cmd.query_async(&mut conn)).await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// Whether the fleet's Redis is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.redis.settings().is_cluster()
    }

    /// Gives every publisher (gateways and direct `rtg_publish` callers) the configured rates.
    pub async fn sync_limits(&self, quotas: &Quotas) -> Result<(), BusError> {
        let key = format!("{}:quota:limits", self.prefix);
        let (default, own) = quotas.publish_rates();
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        if let Some(rate) = default {
            pipe.hset(&key, "rate:*", rate).ignore();
        }
        for (tenant, rate) in own {
            pipe.hset(&key, format!("rate:{tenant}"), rate).ignore();
        }
        let mut conn = self.redis.connection().await?;
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Stores a revocation for `ttl`; returns the revocation time in force (the later one).
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        user: &UserId,
        before: u64,
        ttl: Duration,
    ) -> Result<u64, BusError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("rtg_revoke")
            .arg(1)
            .arg(self.revoked_key(tenant, user))
            .arg(before)
            .arg(ttl.as_secs().max(1));
        let mut conn = self.redis.connection().await?;
        self.timed(cmd.query_async(&mut conn)).await
    }

    /// Every stored revocation: `(tenant, user, before, time to live)`, from every node that
    /// holds keys (each primary of a cluster keeps its own slots).
    pub async fn revocations(&self) -> Result<Vec<(TenantId, UserId, u64, Duration)>, BusError> {
        let pattern = format!("{}:revoked:*", self.prefix);
        let mut out = Vec::new();
        for client in self.redis.node_clients().await? {
            let mut conn = self
                .timed(client.get_multiplexed_async_connection())
                .await?;
            let keys: Vec<String> = {
                let mut iter: redis::AsyncIter<String> =
                    self.timed(conn.scan_match::<_, String>(&pattern)).await?;
                let mut keys = Vec::new();
                while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(k.map_err(unavailable)?);
                }
                keys
            };
            for key in keys {
                let rest = &key[pattern.len() - 1..];
                let Some((t, u)) = rest.split_once(':') else {
                    continue;
                };
                let (Ok(tenant), Ok(user)) = (TenantId::parse(t), UserId::parse(u)) else {
                    continue;
                };
                let (before, ttl): (Option<u64>, i64) = self
                    .timed(redis::pipe().get(&key).pttl(&key).query_async(&mut conn))
                    .await?;
                if let (Some(before), true) = (before, ttl > 0) {
                    out.push((tenant, user, before, Duration::from_millis(ttl as u64)));
                }
            }
        }
        Ok(out)
    }

    /// Publishes a control message; returns how many gateways received it (on a Redis Cluster,
    /// how many hold a live lease).
    pub async fn publish_control(&self, message: &str) -> Result<usize, BusError> {
        let mut conn = self.redis.connection().await?;
        let received: usize = self
            .timed(conn.publish(self.control_channel(), message))
            .await?;
        if self.is_cluster() {
            return Ok(received.max(self.live_gateways().await?));
        }
        Ok(received)
    }

    /// Stores one gateway's answer to control request `id`.
    pub async fn reply(&self, id: &str, answer: &str) -> Result<(), BusError> {
        let key = self.reply_key(id);
        let mut conn = self.redis.connection().await?;
        self.timed(
            redis::pipe()
                .rpush(&key, answer)
                .ignore()
                .expire(&key, 30)
                .ignore()
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Waits for `expected` answers to request `id`, until `deadline`; returns those that came.
    pub async fn collect(
        &self,
        id: &str,
        expected: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<String>, BusError> {
        let key = self.reply_key(id);
        let mut conn = self.redis.connection().await?;
        let mut out = Vec::with_capacity(expected);
        while out.len() < expected {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_millis(10) {
                break;
            }
            let got: Option<(String, String)> = tokio::time::timeout(
                left + Duration::from_millis(200),
                conn.blpop(&key, left.as_secs_f64()),
            )
            .await
            .map_err(|_| unavailable("Redis did not answer in time"))?
            .map_err(unavailable)?;
            match got {
                Some((_, answer)) => out.push(answer),
                None => break,
            }
        }
        let _: Result<(), _> = conn.del(&key).await;
        Ok(out)
    }
}

/// An item naming a tenant: a tenant, or a tenant and its count.
trait TenantOf {
    fn tenant(&self) -> &TenantId;
}

impl TenantOf for TenantId {
    fn tenant(&self) -> &TenantId {
        self
    }
}

impl TenantOf for (TenantId, u64) {
    fn tenant(&self) -> &TenantId {
        &self.0
    }
}
