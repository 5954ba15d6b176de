//! Operating many tenants on one fleet: API keys with tenants and scopes ([`keys`]), per-tenant
//! quotas ([`quotas`]) that hold across the fleet ([`fleet`], through Redis), and revoked tokens
//! ([`revocations`]).
//!
//! The rest of the gateway calls a few hooks: [`Tenancy::authorize`] (an API key, a scope, a
//! tenant), [`Tenancy::admit`] / [`Tenancy::release`] (a connection of a tenant),
//! [`Tenancy::take_publish_rate`] (the publish rate where `rtg_publish` does not take it: the
//! embedded bus and a Redis Cluster), [`Tenancy::check_token`] (revocations) and [`Tenancy::reload`] (SIGHUP).

pub mod fleet;
pub mod keys;
pub mod quotas;
pub mod revocations;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::auth::{AuthError, Verified};
use crate::events::TenantId;
use crate::metrics;
pub use fleet::Fleet;
pub use keys::{Caller, Keyring, Scope};
pub use quotas::Quotas;
pub use revocations::Revocations;

/// Where the keys and quotas come from, re-read on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `PUBLISH_API_KEYS`.
    pub publish_keys: Vec<String>,
    /// `GATEWAY_API_KEYS_FILE`.
    pub keys_file: Option<PathBuf>,
    /// `GATEWAY_TENANTS_FILE`.
    pub tenants_file: Option<PathBuf>,
}

/// Why an API request was refused by the key check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key configured at all: the key-protected API is off.
    Disabled,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not configured.
    Invalid,
    /// The key lacks the scope.
    Scope(Scope),
}

/// A connection admitted for a tenant (released when the socket goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted against the tenant's cap.
    Admitted,
    /// The tenant holds its cap already.
    Refused,
}

/// An admitted connection.
struct Held {
    tenant: TenantId,
    at: Instant,
    /// Counted in Redis (the tenant had a cap and Redis answered): released there too.
    counted: bool,
}

/// A local token bucket (the embedded bus's publish rate).
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Tenancy state of one gateway.
pub struct Tenancy {
    /// This gateway's id in the fleet (leases, connection listings).
    pub gateway: Arc<str>,
    sources: Sources,
    keyring: RwLock<Arc<Keyring>>,
    quotas: RwLock<Arc<Quotas>>,
    /// Revocations in force.
    pub revocations: Revocations,
    /// How long a revocation is kept (the longest token lifetime).
    pub revocation_ttl: Duration,
    /// Every admitted connection here, by peer id.
    held: Mutex<HashMap<u64, Held>>,
    /// Tenants that had counted connections at the last heartbeat.
    beaten: Mutex<Vec<TenantId>>,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
    /// The Redis side; `None` on the embedded bus (single node: local counts are the fleet's).
    pub fleet: Option<Fleet>,
    /// The control channel is followed (always true on the embedded bus).
    control_up: std::sync::atomic::AtomicBool,
}

impl Tenancy {
    /// Loads keys and quotas from `sources`; the error names what is wrong (never a key).
    pub fn new(
        sources: Sources,
        gateway: Arc<str>,
        revocation_ttl: Duration,
        fleet: Option<Fleet>,
    ) -> Result<Self, String> {
        let keyring = Keyring::load(&sources.publish_keys, sources.keys_file.as_deref())?;
        let quotas = Quotas::load(sources.tenants_file.as_deref())?;
        Ok(Self {
            gateway,
            sources,
            keyring: RwLock::new(Arc::new(keyring)),
            quotas: RwLock::new(Arc::new(quotas)),
            revocations: Revocations::default(),
            revocation_ttl,
            held: Mutex::default(),
            beaten: Mutex::default(),
            buckets: Mutex::default(),
            control_up: std::sync::atomic::AtomicBool::new(fleet.is_none()),
            fleet,
        })
    }

    /// Whether this gateway follows the control channel: a gateway that would miss a
    /// disconnect or a revocation takes no new clients (`/readyz` is 503).
    pub fn control_ready(&self) -> bool {
        self.control_up.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The control channel was subscribed (and stored revocations read) or lost.
    pub fn set_control_ready(&self, up: bool) {
        self.control_up
            .store(up, std::sync::atomic::Ordering::SeqCst);
    }

    /// The keys in force.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().clone()
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Arc<Quotas> {
        self.quotas.read().clone()
    }

    /// Re-reads the keys file and the tenants file. A file that does not load leaves the keys
    /// and quotas in force unchanged; the error says why. Connections are not touched.
    pub async fn reload(&self) -> Result<(usize, usize), String> {
        let keyring = Keyring::load(
            &self.sources.publish_keys,
            self.sources.keys_file.as_deref(),
        )
        .map_err(|e| format!("GATEWAY_API_KEYS_FILE: {e}"))?;
        let quotas = Quotas::load(self.sources.tenants_file.as_deref())
            .map_err(|e| format!("GATEWAY_TENANTS_FILE: {e}"))?;
        let keys = keyring.len();
        *self.keyring.write() = Arc::new(keyring);
        *self.quotas.write() = Arc::new(quotas);
        self.sync_limits().await;
        Ok((keys, self.held_count()))
    }

    /// Hands the publish rates to Redis, where `rtg_publish` enforces them.
    pub async fn sync_limits(&self) {
        if let Some(fleet) = &self.fleet {
            if let Err(e) = fleet.sync_limits(&self.quotas()).await {
                tracing::warn!(error = %e, "could not store the tenants' publish rates in Redis; retrying at the next heartbeat");
            }
        }
    }

    fn held_count(&self) -> usize {
        self.held.lock().len()
    }

    /// Checks a presented API key (the `Authorization` header's bearer value) for `scope`.
    /// The tenant is checked separately ([`Caller::has_tenant`]) once the request names it.
    pub fn authorize(&self, bearer: Option<&str>, scope: Scope) -> Result<Caller, Denied> {
        let keyring = self.keyring();
        if keyring.is_empty() {
            return Err(Denied::Disabled);
        }
        let presented = bearer.ok_or(Denied::Missing)?;
        let caller = keyring.find(presented).ok_or(Denied::Invalid)?.clone();
        if !caller.has_scope(scope) {
            return Err(Denied::Scope(scope));
        }
        Ok(caller)
    }

    /// Refuses a revoked token.
    pub fn check_token(&self, verified: &Verified) -> Result<(), AuthError> {
        self.revocations
            .check(&verified.identity, verified.issued_at)
            .inspect_err(|e| {
                ::metrics::counter!(metrics::AUTH_FAILURES, "reason" => e.code()).increment(1);
            })
    }

    fn count_quota(&self, quota: &'static str, outcome: &'static str, tenant: &TenantId) {
        let label = self.quotas().metric_label(tenant);
        ::metrics::counter!(metrics::TENANT_QUOTA, "quota" => quota, "outcome" => outcome, "tenant" => label)
            .increment(1);
    }

    /// Admits connection `peer` of `tenant` against the tenant's fleet-wide cap. Redis down:
    /// admitted (the bus being down already makes the gateway not ready), and logged.
    pub async fn admit(&self, peer: u64, tenant: &TenantId) -> Admission {
        let limit = self.quotas().of(tenant).max_connections;
        let (admitted, counted) = match (limit, &self.fleet) {
            (None, _) => (true, false),
            (Some(limit), None) => {
                let held = self
                    .held
                    .lock()
                    .values()
                    .filter(|h| h.tenant == *tenant)
                    .count() as u64;
                (held < limit, false)
            }
            (Some(limit), Some(fleet)) => match fleet.admit(&self.gateway, tenant, limit).await {
                Ok(ok) => (ok, ok),
                Err(e) => {
                    tracing::warn!(error = %e, "connection quota not checked: Redis unavailable");
                    (true, false)
                }
            },
        };
        if admitted {
            let held = Held {
                tenant: tenant.clone(),
                at: Instant::now(),
                counted,
            };
            self.held.lock().insert(peer, held);
            if limit.is_some() {
                self.count_quota("connections", "allowed", tenant);
            }
            Admission::Admitted
        } else {
            self.count_quota("connections", "refused", tenant);
            Admission::Refused
        }
    }

    /// Connection `peer` is gone: its slot is given back (in Redis, in the background).
    pub fn release(&self, peer: u64) {
        let held = self.held.lock().remove(&peer);
        if let Some(h) = held {
            self.uncount(h);
        }
    }

    fn uncount(&self, h: Held) {
        let (Some(fleet), true) = (self.fleet.clone(), h.counted) else {
            return;
        };
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            if let Err(e) = fleet.release(&gateway, &h.tenant).await {
                tracing::warn!(error = %e, "connection slot not given back; the lease repairs it when this gateway stops");
            }
        });
    }

    /// Forgets admissions of connections that are not connected (`alive` is false) and are
    /// older than a handshake can take: a socket that vanished between its admission and its
    /// registration must not hold a slot for ever.
    pub fn prune(&self, alive: impl Fn(u64) -> bool) {
        let Some(stale) = Instant::now().checked_sub(Duration::from_secs(10)) else {
            return;
        };
        let gone: Vec<Held> = {
            let mut held = self.held.lock();
            let ids: Vec<u64> = held
                .iter()
                .filter(|(id, h)| h.at <= stale && !alive(**id))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| held.remove(id)).collect()
        };
        for h in gone {
            self.uncount(h);
        }
    }

    /// Takes `events` (an event times its rooms) from `tenant`'s publish rate before publishing,
    /// where `rtg_publish` does not take it itself: on this gateway on the embedded bus, in Redis
    /// (`rtg_rate_take`) on a Redis Cluster. On one Redis, `rtg_publish` takes it. `Err` is the
    /// wait before it would pass.
    pub async fn take_publish_rate(
        &self,
        tenant: &TenantId,
        events: usize,
    ) -> Result<(), Duration> {
        let Some(fleet) = &self.fleet else {
            return self.take_publish(tenant, events);
        };
        let Some(rate) = self.quotas().of(tenant).publish_rate else {
            return Ok(());
        };
        if !fleet.is_cluster() {
            return Ok(());
        }
        match fleet.take_rate(tenant, rate, events).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                self.publish_refused(tenant);
                Err(wait)
            }
            Err(e) => {
                // The publish that follows meets the same Redis and answers for it.
                tracing::warn!(%tenant, error = %e, "publish rate not checked: Redis unavailable");
                Ok(())
            }
        }
    }

    /// Takes `events` from the tenant's publish rate on this gateway (the embedded bus).
    /// `Err` is the wait before it would pass.
    pub fn take_publish(&self, tenant: &TenantId, events: usize) -> Result<(), Duration> {
        let Some(rate) = self.quotas().of(tenant).publish_rate else {
            return Ok(());
        };
        let rate = rate.max(1) as f64;
        let need = (events as f64).clamp(1.0, rate);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(tenant.clone()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= need {
            b.tokens -= events as f64;
            self.count_quota("publish_rate", "allowed", tenant);
            Ok(())
        } else {
            self.count_quota("publish_rate", "refused", tenant);
            Err(Duration::from_secs_f64((need - b.tokens) / rate))
        }
    }

    /// Counts a refusal by `rtg_publish` (the Redis bus).
    pub fn publish_refused(&self, tenant: &TenantId) {
        self.count_quota("publish_rate", "refused", tenant);
    }

    /// Counts an event `rtg_publish` let through for a tenant with a rate (the Redis bus).
    pub fn publish_allowed(&self, tenant: &TenantId) {
        if self.fleet.is_some() && self.quotas().of(tenant).publish_rate.is_some() {
            self.count_quota("publish_rate", "allowed", tenant);
        }
    }

    /// The cap on rooms one socket of a user of `tenant` may join, if the tenant has one.
    pub fn rooms_cap(&self, tenant: &TenantId) -> Option<usize> {
        self.quotas().of(tenant).max_rooms_per_user
    }

    /// Renews this gateway's lease and keeps its counted connections' keys alive; a count
    /// Redis lost (a restart without persistence) is restored from this gateway's own.
    pub async fn beat(&self) {
        let Some(fleet) = &self.fleet else { return };
        let counts: Vec<(TenantId, u64)> = {
            let mut by_tenant: HashMap<TenantId, u64> = HashMap::new();
            for h in self.held.lock().values().filter(|h| h.counted) {
                *by_tenant.entry(h.tenant.clone()).or_default() += 1;
            }
            by_tenant.into_iter().collect()
        };
        *self.beaten.lock() = counts.iter().map(|(t, _)| t.clone()).collect();
        if let Err(e) = fleet.beat(&self.gateway, &counts).await {
            tracing::warn!(error = %e, "gateway lease not renewed");
        }
    }

    /// This gateway stops: its connections stop counting at once.
    pub async fn leave_fleet(&self) {
        let Some(fleet) = &self.fleet else { return };
        let tenants = self.beaten.lock().clone();
        if let Err(e) = fleet.leave(&self.gateway, &tenants).await {
            tracing::debug!(error = %e, "lease not released; it expires by itself");
        }
    }

    /// Loads the revocations stored in Redis (at start, and after the control channel
    /// reconnects, in case a revocation was published while it was down).
    pub async fn load_revocations(&self) -> Result<usize, String> {
        let Some(fleet) = &self.fleet else {
            return Ok(0);
        };
        let all = fleet.revocations().await.map_err(|e| e.to_string())?;
        let n = all.len();
        for (tenant, user, before, ttl) in all {
            self.revocations.insert(tenant, user, before, ttl);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenancy(publish_keys: &[&str]) -> Tenancy {
        let sources = Sources {
            publish_keys: publish_keys.iter().map(|k| k.to_string()).collect(),
            ..Sources::default()
        };
        Tenancy::new(sources, "gw".into(), Duration::from_secs(60), None).unwrap()
    }

    #[test]
    fn publish_api_keys_publish_and_read_presence_everywhere_but_never_control() {
        let t = tenancy(&["legacy-key-0123456789"]);
        let key = Some("legacy-key-0123456789");
        for scope in [Scope::Publish, Scope::Presence] {
            let c = t.authorize(key, scope).unwrap();
            assert!(c.has_tenant(&TenantId::parse("77").unwrap()));
            assert_eq!(&*c.name, "PUBLISH_API_KEYS[0]");
        }
        assert_eq!(
            t.authorize(key, Scope::Control).unwrap_err(),
            Denied::Scope(Scope::Control)
        );
        assert_eq!(
            t.authorize(None, Scope::Publish).unwrap_err(),
            Denied::Missing
        );
        assert_eq!(
            t.authorize(Some("other-key-0123456789"), Scope::Publish)
                .unwrap_err(),
            Denied::Invalid
        );
        assert_eq!(
            tenancy(&[]).authorize(key, Scope::Publish).unwrap_err(),
            Denied::Disabled
        );
    }

    #[test]
    fn the_embedded_rate_is_a_token_bucket_per_tenant() {
        let t = tenancy(&[]);
        *t.quotas.write() =
            Arc::new(Quotas::parse(r#"{"tenants":{"1":{"publishRate":5}}}"#).unwrap());
        let (one, two) = (TenantId::parse("1").unwrap(), TenantId::parse("2").unwrap());
        assert!(t.take_publish(&one, 5).is_ok());
        let wait = t.take_publish(&one, 1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(t.take_publish(&two, 1000).is_ok(), "tenant 2 has no rate");
    }
}
