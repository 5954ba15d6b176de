//! The gateway's lease in Redis, and the reaping of gateways whose lease ran out.
//!
//! Each gateway process writes presence entries and lifecycle connections under an
//! *incarnation* (`<name>-<ulid>`) whose lease it renews three times per lease period. A write
//! carries the deadline of the last renewal and Redis refuses it past that deadline, so an
//! incarnation whose lease ran out never gets another entry. Every gateway looks for expired
//! incarnations at each renewal and reaps them room by room and tenant by tenant, each step one
//! atomic function call that finds nothing the second time: two gateways that notice the same
//! loss at once emit each leave, and write each `gateway_lost` entry, once between them.
//!
//! A gateway that finds its own lease lapsed (Redis unreachable for longer than the lease, or
//! a long stall) takes a new incarnation and asserts its members and connections again.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::config::PresenceConfig;
use crate::bus::redis::{ensure_library, Publisher, RedisSettings};
use crate::bus::BusError;
use crate::events::{RoomKey, TenantId};
use crate::metrics;

/// Source of the fleet function library (`FUNCTION LOAD`).
pub const FLEET_LIBRARY: &str = include_str!("fleet.lua");
/// Version of [`FLEET_LIBRARY`]; `FCALL_RO rtg_fleet_version 0` returns the loaded one.
pub const FLEET_VERSION: i64 = 1;

/// Names of the fleet's Redis keys.
#[derive(Debug, Clone)]
pub struct FleetKeys {
    prefix: String,
}

impl FleetKeys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Sorted set of incarnations by lease deadline (ms).
    pub fn registry(&self) -> String {
        format!("{}:gateways", self.prefix)
    }

    /// Rooms an incarnation has presence entries in.
    pub fn rooms_index(&self, inc: &str) -> String {
        format!("{}:gw:{{{inc}}}:rooms", self.prefix)
    }

    /// Tenants an incarnation has lifecycle connections in.
    pub fn tenants_index(&self, inc: &str) -> String {
        format!("{}:gw:{{{inc}}}:tenants", self.prefix)
    }

    /// A room's fleet-wide members: user → `<connections>|<role>`.
    pub fn members(&self, room: &RoomKey) -> String {
        format!("{}:{{{}}}:pu", self.prefix, room.as_str())
    }

    /// One incarnation's members of a room: user → connections.
    pub fn gateway_members(&self, room: &RoomKey, inc: &str) -> String {
        format!("{}:{{{}}}:pg:{inc}", self.prefix, room.as_str())
    }

    /// A tenant's lifecycle stream.
    pub fn lifecycle(&self, tenant: &TenantId) -> String {
        format!("{}:{{{}}}:lifecycle", self.prefix, tenant.as_str())
    }

    /// One incarnation's open connections in a tenant: socket id → `<user>|<transport>`.
    pub fn connections(&self, tenant: &TenantId, inc: &str) -> String {
        format!("{}:{{{}}}:conns:{inc}", self.prefix, tenant.as_str())
    }
}

/// The incarnation writes go under, and the deadline Redis holds it to.
#[derive(Debug, Clone)]
pub struct Incarnation {
    /// `<gateway name>-<ulid>`.
    pub id: Arc<str>,
    /// Lease deadline, Redis time in ms (0 before the first renewal: every write is refused).
    pub deadline: i64,
}

/// This gateway's place in the fleet: its Redis pool, its incarnation and lease.
pub struct Fleet {
    publisher: Publisher,
    keys: FleetKeys,
    settings: Arc<RedisSettings>,
    config: PresenceConfig,
    current: Mutex<Incarnation>,
    /// Bumped on every new incarnation; presence and lifecycle then assert everything again.
    generation: watch::Sender<u64>,
    /// Woken when a write found the lease lapsed: renew (and re-incarnate) now.
    suspect: Notify,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn new_incarnation(name: &str) -> Arc<str> {
    Arc::from(format!("{name}-{}", ulid::Ulid::new()))
}

impl Fleet {
    /// A fleet member with its own small Redis pool; connects lazily.
    pub fn new(settings: &RedisSettings, config: PresenceConfig) -> Result<Arc<Self>, BusError> {
        let mut own = settings.clone();
        own.pool_size = own.pool_size.clamp(2, 4);
        let settings = Arc::new(own);
        let publisher = Publisher::new(settings.clone())?;
        let (generation, _) = watch::channel(0);
        Ok(Arc::new(Self {
            keys: FleetKeys::new(&settings.prefix),
            current: Mutex::new(Incarnation {
                id: new_incarnation(&config.gateway_name),
                deadline: 0,
            }),
            publisher,
            settings,
            config,
            generation,
            suspect: Notify::new(),
        }))
    }

    /// Key names.
    pub fn keys(&self) -> &FleetKeys {
        &self.keys
    }

    /// Redis settings (prefix, history cap and TTL for presence events).
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Presence and lifecycle settings.
    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    /// The incarnation to write under now.
    pub fn incarnation(&self) -> Incarnation {
        self.current.lock().clone()
    }

    /// A receiver that changes whenever the gateway takes a new incarnation.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A write found the lease lapsed: renew at once.
    pub fn lapsed(&self) {
        self.suspect.notify_one();
    }

    /// Runs a command or pipeline with the operation deadline, loading the library once if
    /// Redis lost it (a restart without persistence).
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        run: impl Fn() -> redis::Pipeline,
    ) -> Result<T, BusError> {
        let mut conn = self.publisher.connection().await?;
        for attempt in 0..2 {
            let reply =
                tokio::time::timeout(self.settings.timeout, run().query_async::<T>(&mut conn))
                    .await
                    .map_err(|_| unavailable("Redis did not answer in time"))?;
            match reply {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && e.to_string().contains("Function not found") => {
                    ensure_library(&mut conn, "rtg_fleet_version", FLEET_VERSION, FLEET_LIBRARY)
                        .await?;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable("the fleet functions are not loaded"))
    }

    /// Renews the lease (or takes it for the first time); on a lapsed lease takes a new
    /// incarnation (and tells presence and lifecycle to assert everything again).
    pub async fn renew(&self) -> Result<(), BusError> {
        let lease_ms = self.config.lease.as_millis().max(1) as u64;
        let (inc, first) = {
            let cur = self.incarnation();
            (cur.id.clone(), cur.deadline == 0)
        };
        let registry = self.keys.registry();
        let renew = |inc: &str, first: bool| {
            let mut p = redis::pipe();
            p.cmd("FCALL")
                .arg("rtg_lease_renew")
                .arg(1)
                .arg(&registry)
                .arg(inc)
                .arg(lease_ms)
                .arg(if first { 1 } else { 0 });
            p
        };
        let (deadline,): (i64,) = self.query(|| renew(&inc, first)).await.inspect_err(|_| {
            ::metrics::counter!(metrics::LEASE_RENEWALS, "result" => "error").increment(1)
        })?;
        if deadline >= 0 {
            ::metrics::counter!(metrics::LEASE_RENEWALS, "result" => "ok").increment(1);
            self.set(inc, deadline);
            return Ok(());
        }
        ::metrics::counter!(metrics::LEASE_RENEWALS, "result" => "lapsed").increment(1);
        let fresh = new_incarnation(&self.config.gateway_name);
        tracing::warn!(old = %inc, new = %fresh, "this gateway's lease lapsed (others remove its members); asserting them again under a new incarnation");
        let (deadline,): (i64,) = self.query(|| renew(&fresh, true)).await?;
        self.set(fresh, deadline);
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    fn set(&self, id: Arc<str>, deadline: i64) {
        *self.current.lock() = Incarnation { id, deadline };
    }

    /// Reaps every incarnation whose lease ran out (other than this gateway's own); returns how
    /// many this call removed from the registry.
    pub async fn sweep(&self) -> Result<usize, BusError> {
        let registry = self.keys.registry();
        let (expired,): (Vec<String>,) = self
            .query(|| {
                let mut p = redis::pipe();
                p.cmd("FCALL_RO")
                    .arg("rtg_lease_expired")
                    .arg(1)
                    .arg(&registry);
                p
            })
            .await?;
        let own = self.incarnation().id;
        let mut forgotten = 0;
        for inc in expired.iter().filter(|i| i.as_str() != &*own) {
            forgotten += self.reap(inc, false).await?;
        }
        Ok(forgotten)
    }

    /// Removes a lost incarnation's presence entries (with their leaves) and writes its
    /// connections' `gateway_lost` disconnects; 1 if this call then dropped it from the registry.
    async fn reap(&self, inc: &str, force: bool) -> Result<usize, BusError> {
        let rooms_index = self.keys.rooms_index(inc);
        let tenants_index = self.keys.tenants_index(inc);
        let (rooms, tenants): (Vec<String>, Vec<String>) = self
            .query(|| {
                let mut p = redis::pipe();
                p.cmd("SMEMBERS").arg(&rooms_index);
                p.cmd("SMEMBERS").arg(&tenants_index);
                p
            })
            .await?;
        let rooms: Vec<RoomKey> = rooms
            .iter()
            .filter_map(|r| RoomKey::parse(r, usize::MAX).ok())
            .collect();
        let mut left = 0u64;
        for chunk in rooms.chunks(64) {
            let counts: Vec<u64> = self
                .query(|| {
                    let mut p = redis::pipe();
                    for key in chunk {
                        let names = self.settings.names(key);
                        p.cmd("FCALL")
                            .arg("rtg_presence_reap")
                            .arg(4)
                            .arg(self.keys.members(key))
                            .arg(self.keys.gateway_members(key, inc))
                            .arg(&names.stream)
                            .arg(&names.meta);
                        self.event_args(&mut p, key);
                    }
                    p
                })
                .await?;
            left += counts.iter().sum::<u64>();
        }
        let tenants: Vec<TenantId> = tenants
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect();
        let lost: Vec<u64> = if tenants.is_empty() {
            Vec::new()
        } else {
            self.query(|| {
                let mut p = redis::pipe();
                for t in &tenants {
                    p.cmd("FCALL")
                        .arg("rtg_lifecycle_lost")
                        .arg(2)
                        .arg(self.keys.lifecycle(t))
                        .arg(self.keys.connections(t, inc))
                        .arg(inc)
                        .arg(self.config.lifecycle_max_len);
                }
                p
            })
            .await?
        };
        let lost: u64 = lost.iter().sum();
        let forget = if force {
            "rtg_lease_release"
        } else {
            "rtg_lease_forget"
        };
        let (forgot,): (i64,) = self
            .query(|| {
                let mut p = redis::pipe();
                p.cmd("DEL").arg(&rooms_index).ignore();
                p.cmd("DEL").arg(&tenants_index).ignore();
                p.cmd("FCALL")
                    .arg(forget)
                    .arg(1)
                    .arg(self.keys.registry())
                    .arg(inc);
                p
            })
            .await?;
        ::metrics::counter!(metrics::PRESENCE_REAPED).increment(left);
        ::metrics::counter!(metrics::LIFECYCLE_ENTRIES).increment(lost);
        if forgot == 1 && !force {
            ::metrics::counter!(metrics::LEASE_EXPIRIES).increment(1);
            tracing::warn!(
                gateway = inc,
                rooms = rooms.len(),
                users_left = left,
                connections_lost = lost,
                "a gateway's lease expired; removed its members"
            );
        }
        Ok(forgot as usize)
    }

    /// The arguments of a presence event for `key` (shared by set and reap): emit flag,
    /// channel, history cap and TTL, tenant, room, a fresh event id prefix.
    pub fn event_args(&self, p: &mut redis::Pipeline, key: &RoomKey) {
        let names = self.settings.names(key);
        p.arg(if self.config.emits(key.room()) { 1 } else { 0 })
            .arg(names.channel)
            .arg(self.settings.history_max_len)
            .arg(self.settings.history_ttl.as_secs().max(1))
            .arg(key.tenant().as_str())
            .arg(key.room().as_str())
            .arg(ulid::Ulid::new().to_string());
    }

    /// Renews the lease and sweeps three times per lease period (and at once when a write found
    /// the lease lapsed) until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = self.config.lease / 3;
        loop {
            match self.renew().await {
                Ok(()) => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "could not reap expired gateways; trying again at the next tick");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the presence lease; trying again at the next tick")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
                _ = self.suspect.notified() => {}
            }
        }
    }

    /// Gives the lease back on a graceful exit, once every socket is gone: whatever entries
    /// are left (there should be none) are removed as for a lost gateway, then the incarnation
    /// leaves the registry.
    pub async fn retire(&self) {
        let own = self.incarnation().id;
        match self.reap(&own, true).await {
            Ok(_) => tracing::info!(gateway = %own, "presence lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the presence lease; others reap it when it expires")
            }
        }
    }

    /// Loads the fleet library now (at startup), so the first writes find it.
    pub async fn load(&self) -> Result<(), BusError> {
        let mut conn = self.publisher.connection().await?;
        ensure_library(&mut conn, "rtg_fleet_version", FLEET_VERSION, FLEET_LIBRARY).await
    }

    /// How long to wait after a failed write before trying again.
    pub fn retry_delay(&self) -> Duration {
        (self.config.lease / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}
